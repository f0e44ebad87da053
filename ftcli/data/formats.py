"""Datasets -> standard rows -> token ids with labels.

`read_rows` loads a local file or folder (or a hub id when online) and checks every row,
`to_standard` turns each supported format into one of TRL's standard forms (messages,
text, preference, prompt), and `build_sft` tokenizes them with the chat template so that
TRL receives ready `input_ids`/`labels` and never re-renders anything.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.data import json_rows
from ftcli.data.messages import with_system
from ftcli.errors import DataError
from ftcli.recipe import DatasetSection

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "model": "assistant", "bot": "assistant", "system": "system"}
LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class DataReport:
    """What happened to the rows: shown in the run summary and written to the manifest."""

    source: str
    fingerprint: str
    rows_read: int = 0
    rows_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    rows_truncated: int = 0
    rows_without_targets: int = 0
    train_rows: int = 0
    eval_rows: int = 0


# --------------------------------------------------------------------------- reading


def _load_raw(section: DatasetSection):
    import datasets

    datasets.disable_progress_bars()
    path = Path(section.path)
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if section.split not in loaded:
                    raise DataError(f"{path}: no split {section.split!r}; it has {', '.join(loaded)}",
                                    hint="set dataset.split to one of those")
                loaded = loaded[section.split]
            return loaded
        if path.is_file():
            kind = LOADERS.get(path.suffix.lower())
            if kind is None:
                raise DataError(f"{path}: unsupported file type {path.suffix!r}",
                                hint=f"use one of {', '.join(LOADERS)} or a folder saved with Dataset.save_to_disk")
            if path.suffix.lower() == ".jsonl":
                return json_rows.read_jsonl(path, section.skip_invalid)
            if path.suffix.lower() == ".json":
                return json_rows.read_json(path, section.skip_invalid)
            # datasets logs its own traceback for an unreadable file; ours says the file and the cause once.
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)
            return datasets.load_dataset(kind, data_files=str(path), split="train")
        if path.suffix or path.exists() or str(section.path).startswith((".", "/")):
            raise DataError(f"{section.path}: dataset file not found",
                            hint="check dataset.path (relative paths are resolved from the current folder)")
        return datasets.load_dataset(section.path, split=section.split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the file and the reason
        raise DataError(f"{section.path}: could not read the dataset: {str(err).splitlines()[0]}") from None


def fingerprint_of(section: DatasetSection) -> str:
    """sha256 of the file bytes (or of the folder's files), so a run records exactly which data it saw."""
    path = Path(section.path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return f"hub:{section.path}"
    for file in files:
        digest.update(file.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def detect_format(columns: list[str]) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "text" in cols:
        return "text"
    if "prompt" in cols:
        return "prompt"
    raise DataError(f"could not tell the dataset format from its columns {sorted(cols)}",
                    hint="set dataset.format (messages, sharegpt, alpaca, prompt_completion, text, preference, "
                         "prompt) and, if your columns are named differently, dataset.columns")


# --------------------------------------------------------------------------- one row


def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ValueError(f"{what}[{i}] is not a mapping")
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value"))
        if role not in ROLE_ALIASES:
            raise ValueError(f"{what}[{i}] has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise ValueError(f"{what}[{i}] content must be a string")
        out.append({"role": ROLE_ALIASES[role], "content": content})
    return out


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {key!r} must be a non-empty string")
    return value


def preference_row(row: dict) -> dict:
    """Explicit {prompt, chosen, rejected} rows pass through (checked); implicit rows, two whole
    conversations that share a prefix, are split into the shared prompt and the two replies."""
    if "chosen" not in row or "rejected" not in row:
        raise ValueError("a preference row needs `chosen` and `rejected`")
    # A single message (Axolotl, LLaMA-Factory ranking data) is a list of one; from/value become role/content.
    chosen, rejected = ([value] if isinstance(value, dict) else value for value in (row["chosen"], row["rejected"]))
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list) and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"column {key!r} must be a non-empty string, a message or a list of messages")
    chosen, rejected = (_messages(v, k) if isinstance(v, list) else v
                        for k, v in (("chosen", chosen), ("rejected", rejected)))
    prompt = row.get("prompt")
    if prompt is not None:
        if isinstance(prompt, list):
            prompt = _messages(prompt, "prompt")
        elif not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("column 'prompt' must be a non-empty string or a list of messages")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise ValueError("without a `prompt` column, `chosen` and `rejected` must be whole conversations "
                         "(lists of messages) that share their opening turns")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # the prompt ends on a user (or system) turn; the replies start at an assistant turn
    if shared == 0:
        raise ValueError("`chosen` and `rejected` share no opening turns to use as the prompt")
    if shared == len(chosen) or shared == len(rejected):
        raise ValueError("`chosen` and `rejected` must each continue the shared prompt with a reply")
    if chosen[shared:] == rejected[shared:]:
        raise ValueError("`chosen` and `rejected` are the same conversation")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def to_standard(row: dict, fmt: str, system: str | None = None) -> dict:
    """One raw row -> {"messages"} | {"text"} | {"prompt", "chosen", "rejected"} | {"prompt", ...}.

    Raises ValueError with what is wrong; the caller adds the file and row number.
    """
    if fmt == "messages":
        msgs = _messages(row.get("messages"), "messages")
    elif fmt == "sharegpt":
        msgs = _messages(row.get("conversations"), "conversations")
    elif fmt == "alpaca":
        instruction = _text(row, "instruction")
        extra = row.get("input") or ""
        user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
    elif fmt == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        p = _messages(prompt, "prompt") if isinstance(prompt, list) else [{"role": "user", "content": _text(row, "prompt")}]
        c = (_messages(completion, "completion") if isinstance(completion, list)
             else [{"role": "assistant", "content": _text(row, "completion")}])
        msgs = p + c
    elif fmt == "text":
        return {"text": _text(row, "text")}
    elif fmt == "preference":
        return preference_row(row)
    elif fmt == "prompt":
        return dict(row)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("the conversation has no assistant message to learn from")
    return {"messages": with_system(msgs, system)}


# --------------------------------------------------------------------------- whole dataset


def read_rows(section: DatasetSection) -> tuple[list[dict], str, DataReport]:
    """Load, map columns, detect the format and convert every row; bad rows raise or are skipped."""
    raw = _load_raw(section)
    if section.columns:
        missing = [theirs for theirs in section.columns.values() if theirs not in raw.column_names]
        if missing:
            raise DataError(f"{section.path}: dataset.columns names columns that do not exist: {missing}; "
                            f"the dataset has {raw.column_names}")
        raw = raw.rename_columns({theirs: ours for ours, theirs in section.columns.items() if theirs != ours})
    if len(raw) == 0:
        skipped = getattr(raw, "skipped", [])
        raise DataError(f"{section.path}: no rows" + (f"; every line was skipped, e.g. {skipped[0]}" if skipped else ""))
    try:
        fmt = section.format if section.format != "auto" else detect_format(raw.column_names)
    except DataError as err:
        raise DataError(f"{section.path}: {err.message}", hint=err.hint) from None
    report = DataReport(source=section.path, fingerprint=fingerprint_of(section))
    for problem in getattr(raw, "skipped", []):  # lines of a JSON file that were not rows at all
        _skip(report, problem)
    places = getattr(raw, "places", None)
    rows = []
    for index, row in enumerate(raw):
        if section.max_samples and len(rows) >= section.max_samples:
            break
        report.rows_read += 1
        try:
            rows.append(to_standard(row, fmt, section.system_prompt))
        except ValueError as err:
            where = f"{section.path}, {places[index] if places else f'row {index + 1}'}"
            if not section.skip_invalid:
                raise DataError(f"{where}: {err}",
                                hint="fix the row, or set dataset.skip_invalid: true to skip bad rows") from None
            _skip(report, f"{where}: {err}")
    if not rows:
        raise DataError(f"{section.path}: no usable rows (read {report.rows_read}, skipped {report.rows_skipped})")
    return rows, fmt, report


def _skip(report: DataReport, problem: str) -> None:
    report.rows_skipped += 1
    if len(report.skipped_examples) < 5:
        report.skipped_examples.append(problem)


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle then a split; at least one eval row whenever a fraction is asked for."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise DataError(f"dataset.eval_fraction={fraction} leaves no training rows out of {len(rows)}")
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx]


