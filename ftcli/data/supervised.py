"""SFT rows -> token ids with labels, through the chat template, so TRL never re-renders anything."""

from __future__ import annotations

from ftcli.data import templates
from ftcli.data.formats import DataReport
from ftcli.data.messages import fold_system
from ftcli.errors import DataError


def encode_sft_row(row: dict, template, tokenizer, train_on: str, max_length: int) -> dict:
    """Token ids and labels for one standard SFT row (messages via the chat template, or raw text)."""
    if "messages" in row:
        messages = row["messages"] if template.supports_system else fold_system(row["messages"])
        return templates.encode(template, messages, tokenizer, train_on=train_on, max_length=max_length)
    ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]  # so a text model learns where documents end
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids), "truncated": truncated}


def build_sft(rows: list[dict], template, tokenizer, train_on: str, max_length: int, report: DataReport):
    """A datasets.Dataset of input_ids/labels; rows left with no trained token are dropped and counted."""
    import datasets

    encoded = []
    for number, row in enumerate(rows, start=1):
        try:
            item = encode_sft_row(row, template, tokenizer, train_on, max_length)
        except templates.ChatTemplateError as err:
            raise DataError(f"conversation {number}: the chat template {template.name!r} cannot render it: "
                            f"{err.message}", hint=err.hint) from None
        report.rows_truncated += int(item.pop("truncated"))
        if all(label == -100 for label in item["labels"][1:]):
            report.rows_without_targets += 1
            continue
        encoded.append(item)
    if not encoded:
        raise DataError("no row has any trainable token after templating and truncation",
                        hint="raise model.max_seq_length or check that rows have assistant replies")
    return datasets.Dataset.from_list(encoded)
