"""DPO stage: TRL's DPOTrainer on preference pairs tokenized here with the recipe's chat template.

Rows come from data.read_rows as {prompt, chosen, rejected} (text or message lists; implicit
pairs are already split at their shared prefix). Each pair is rendered with the same template
and BOS rule as SFT (templates.encode), so the reply tokens DPO scores are exactly the tokens SFT
trains: the assistant turn up to and including its end-of-turn token.

The reference model: with LoRA it is the same network with the adapter switched off (TRL's
PEFT path, no second copy of the weights); a continued adapter (model.adapter) is copied once
as a frozen "ref" adapter, so the reference is the model you started from. With
`precompute_ref_log_probs` the reference is scored once before training. TRL logs
rewards/chosen, rewards/rejected, rewards/margins and rewards/accuracies at every logging step.
"""

from __future__ import annotations

from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from ftcli.data import templates
from ftcli.errors import DataError
from ftcli.recipe import Recipe
from ftcli.engine import logprobs
from ftcli.data.messages import as_messages, prompt_messages
from ftcli.stages.base import TrainerSetup, without_fused_loss
from ftcli.stages.trainer_args import finish, trainer_kwargs, use_base_as_reference

IGNORE = templates.IGNORE_INDEX


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_pair(row: dict, template, tokenizer, system: str | None = None) -> dict:
    """{prompt_ids, chosen_ids, rejected_ids} for one preference row (no truncation)."""
    prompt = prompt_messages(row["prompt"], system, template)
    ids = templates.prompt_ids(template, prompt, tokenizer)
    full = {}
    for key in ("chosen", "rejected"):
        reply = as_messages(row[key], "assistant")
        if reply[0]["role"] != "assistant":
            raise ValueError(f"`{key}` must start with an assistant turn")
        enc = templates.encode(template, prompt + reply, tokenizer, train_on="assistant")
        trained = [i for i, label in enumerate(enc["labels"]) if label != IGNORE]
        full[key] = enc["input_ids"][: trained[-1] + 1] if trained else enc["input_ids"]
    # The reply starts where the tokenized prompt and prompt+reply part (usually right after the prompt;
    # earlier when tokens merge across the boundary).
    cut = min(_common_prefix(ids, full["chosen"]), _common_prefix(ids, full["rejected"]))
    pair = {"prompt_ids": full["chosen"][:cut], "chosen_ids": full["chosen"][cut:],
            "rejected_ids": full["rejected"][cut:]}
    if not pair["chosen_ids"] or not pair["rejected_ids"]:
        raise ValueError("a reply has no tokens after the prompt")
    return pair


def build_dataset(rows: list[dict], template, tokenizer, recipe: Recipe, report):
    """A datasets.Dataset of prompt_ids / chosen_ids / rejected_ids, truncated as the recipe says."""
    import datasets

    section, max_length = recipe.train.dpo, recipe.model.max_seq_length
    encoded = []
    for number, row in enumerate(rows, start=1):
        try:
            pair = encode_pair(row, template, tokenizer, recipe.dataset.system_prompt)
        except templates.ChatTemplateError as err:
            raise DataError(f"preference pair {number}: the chat template {template.name!r} cannot render it: "
                            f"{err.message}", hint=err.hint) from None
        except ValueError as err:
            raise DataError(f"preference pair {number}: {err}") from None
        truncated = False
        if section.max_prompt_length and len(pair["prompt_ids"]) > section.max_prompt_length:
            pair["prompt_ids"] = pair["prompt_ids"][-section.max_prompt_length:]  # keep the latest turns
            truncated = True
        for key in ("chosen_ids", "rejected_ids"):
            if section.max_completion_length and len(pair[key]) > section.max_completion_length:
                pair[key] = pair[key][: section.max_completion_length]
                truncated = True
            if len(pair["prompt_ids"]) + len(pair[key]) > max_length:
                truncated = True  # the collator keeps the first max_length tokens
        if len(pair["prompt_ids"]) >= max_length:
            report.rows_without_targets += 1  # no reply token would survive
            continue
        report.rows_truncated += int(truncated)
        encoded.append(pair)
    if not encoded:
        raise DataError("no preference pair has a reply token left after templating and truncation",
                        hint="raise model.max_seq_length or set train.dpo.max_prompt_length")
    return datasets.Dataset.from_list(encoded)


class FtcliDPOTrainer(DPOTrainer):
    """DPOTrainer that takes our pre-tokenized pairs as they are, and keeps their `length` for the sampler."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in getattr(dataset, "column_names", []):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "length" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "length"]  # read by the length-grouped sampler


def trainer_args(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool, report_to: list[str]):
    d = recipe.train.dpo
    losses = [d.loss_type] if isinstance(d.loss_type, str) else list(d.loss_type)
    return DPOConfig(
        **trainer_kwargs(recipe, checkpoints_dir, precision, has_eval, report_to),
        max_length=recipe.model.max_seq_length,
        beta=d.beta,
        loss_type=losses,
        loss_weights=d.loss_weights,
        label_smoothing=d.label_smoothing,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        # Each batch pads to its longest pair; pairs are sorted by length within shuffled windows of batches.
        train_sampling_strategy="group_by_length",
        length_column_name="length",
    )


def with_lengths(dataset, max_length: int):
    """The pairs with a `length` column: what the collator pads a pair's rows to, read by the length-grouped
    sampler so that a batch holds pairs of similar length (little padding to compute)."""
    lengths = [min(max_length, len(p) + max(len(c), len(r)))
               for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    return dataset.add_column("length", lengths)


def build_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset, checkpoints_dir: str,
                  precision: dict, report_to: list[str], callbacks: list, log=lambda _: None):
    args = trainer_args(recipe, checkpoints_dir, precision, eval_dataset is not None, report_to)
    train_dataset = with_lengths(train_dataset, recipe.model.max_seq_length)
    eval_dataset = with_lengths(eval_dataset, recipe.model.max_seq_length) if eval_dataset is not None else None
    trainer = FtcliDPOTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    use_base_as_reference(recipe, trainer)
    reason = logprobs.install(trainer.model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    log("log-probs: ftcli fused kernel" if reason is None else f"log-probs: TRL's chunked fused head ({reason})")
    return trainer


class DpoStage:
    """Preference tuning on chosen/rejected pairs (the Stage protocol, stages/base.py)."""

    name = "dpo"

    def build_datasets(self, recipe: Recipe, train_rows: list, eval_rows: list, template, tokenizer, report):
        train = build_dataset(train_rows, template, tokenizer, recipe, report)
        return train, (build_dataset(eval_rows, template, tokenizer, recipe, report) if eval_rows else None)

    def build_trainer(self, setup: TrainerSetup):
        return build_trainer(setup.recipe, setup.model, setup.tokenizer, setup.train_set, setup.eval_set,
                             checkpoints_dir=setup.checkpoints_dir, precision=setup.precision,
                             report_to=setup.report_to, callbacks=setup.callbacks, log=setup.log)

    def kernel_ops(self, requested, sharded: bool):
        # Log-probs go through the stage's own fused head (engine/logprobs.py), not the fused loss.
        return without_fused_loss(requested), None

    def finish(self, trainer) -> None:
        finish(trainer)

