"""GRPO stage: TRL's GRPOTrainer on prompt datasets, with rewards declared in the recipe.

Prompts are rendered here with the recipe's chat template (generation prompt, BOS exactly as in
SFT) and handed to TRL as text, so TRL's tokenizer call reproduces templates.prompt_ids; generation
stops on the template's stop tokens. Every other dataset column (answer, tests, ...) reaches
the reward functions by name.

Advantages are TRL's: with scale_rewards "group", a completion's advantage is its (weighted)
reward minus its group's mean, divided by the group's standard deviation (+1e-4).

Memory: the training forward/backward runs `sequences_per_forward` completions at a time
(backward after each piece), so activation memory scales with one piece, not with the whole
micro-batch. The loss of the micro-batch is unchanged: each piece's loss is weighted by its
share of the loss type's normaliser (sequences for grpo/dr_grpo/sapo/luspo, completion tokens
for bnpo; dapo/cispo/vespo already divide by a batch-wide token count). Per-token log-probs
never build [tokens, vocab] logits (stages/logprobs.py).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from ftcli.data import templates
from ftcli import rewards
from ftcli.errors import DataError
from ftcli.recipe import Recipe
from ftcli.engine import logprobs
from ftcli.data.messages import prompt_messages
from ftcli.stages.base import TrainerSetup, without_fused_loss
from ftcli.stages.trainer_args import finish, trainer_kwargs, use_base_as_reference

AUTO_TOKENS_PER_FORWARD = 4096
# Loss types whose normaliser is per sequence (piece weight = its share of sequences), per token, or global.
_PER_SEQUENCE = {"grpo", "sapo", "dr_grpo", "luspo"}
_PER_TOKEN = {"bnpo"}
_GLOBAL = {"dapo", "cispo", "vespo"}
# Per-row tensors cut at the end of the completion (right padding) when a piece is shorter.
_COMPLETION_KEYS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                    "sampling_per_token_logps", "tool_mask", "importance_sampling_ratio")
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "image_sizes",
                    "spatial_shapes", "num_tiles", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def prompt_text(template, tokenizer, messages: list[dict]) -> tuple[str, list[int]]:
    """The generation prompt as text that TRL's `tokenizer(text)` turns into templates.prompt_ids(...)."""
    text = templates.render(template, messages, tokenizer, add_generation_prompt=True)
    ids = templates.prompt_ids(template, messages, tokenizer)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and templates.adds_bos(tokenizer):
        text = text[len(bos):]  # the tokenizer puts it back
    return text, ids


def build_dataset(rows: list[dict], template, tokenizer, recipe: Recipe, report):
    """A datasets.Dataset whose `prompt` is rendered text; other columns are kept for the rewards."""
    import datasets

    limit = recipe.train.grpo.max_prompt_length
    out = []
    for number, row in enumerate(rows, start=1):
        if "prompt" not in row:
            raise DataError(f"prompt row {number} has no `prompt` column",
                            hint="map your column with dataset.columns: {prompt: <your column>}")
        try:
            messages = prompt_messages(row["prompt"], recipe.dataset.system_prompt, template)
            text, ids = prompt_text(template, tokenizer, messages)
        except templates.ChatTemplateError as err:
            raise DataError(f"prompt {number}: the chat template {template.name!r} cannot render it: "
                            f"{err.message}", hint=err.hint) from None
        except (KeyError, TypeError) as err:
            raise DataError(f"prompt {number}: the prompt must be text or a list of messages ({err})") from None
        if len(ids) > limit:
            report.rows_skipped += 1
            if len(report.skipped_examples) < 5:
                report.skipped_examples.append(f"prompt {number}: {len(ids)} tokens > "
                                               f"train.grpo.max_prompt_length {limit}")
            continue
        out.append({**row, "prompt": text})
    if not out:
        raise DataError(f"every prompt is longer than train.grpo.max_prompt_length ({limit} tokens)",
                        hint="raise train.grpo.max_prompt_length")
    if tokenizer(out[0]["prompt"])["input_ids"] != prompt_text(
            template, tokenizer, prompt_messages(rows[0]["prompt"], recipe.dataset.system_prompt, template))[1]:
        raise DataError(f"template {template.name!r}: the rendered prompt does not tokenize back to the "
                        "template's token ids", hint="check the tokenizer's BOS handling (ftcli doctor)")
    return datasets.Dataset.from_list(out)


class FtcliGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose training forward/backward runs in pieces of `sequences_per_forward` completions."""

    sequences_per_forward: int | str = "auto"

    def _piece_rows(self, inputs) -> int | None:
        """Completions per piece, or None to run the whole micro-batch at once (TRL's way)."""
        setting = self.sequences_per_forward
        rows = inputs["completion_ids"].size(0)
        if setting == "all" or not self.model.training or rows <= 1:
            return None
        if self.loss_type not in _PER_SEQUENCE | _PER_TOKEN | _GLOBAL:
            return None
        if (getattr(self, "_entropy_bonus_enabled", False) or self.top_entropy_quantile < 1.0
                or self.is_deepspeed_enabled or self.is_fsdp_enabled
                or any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS)):
            return None
        if setting == "auto":
            width = inputs["prompt_ids"].size(1) + inputs["completion_ids"].size(1)
            per = max(1, AUTO_TOKENS_PER_FORWARD // max(1, width))
        else:
            per = int(setting)
        return per if per < rows else None

    def _piece(self, inputs: dict, rows: slice) -> dict:
        n = inputs["completion_ids"].size(0)
        width = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"][rows]
        keep = int(mask.sum(0).nonzero().max().item()) + 1 if mask.any() else 1  # drop right padding
        piece = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == n:
                value = value[rows]
                if key in _COMPLETION_KEYS and value.dim() == 2 and value.size(1) == width:
                    value = value[:, :keep]
            piece[key] = value
        return piece

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("The GRPOTrainer does not support returning outputs")
        per = self._piece_rows(inputs)
        if per is None:
            return self._compute_loss(model, inputs)
        n = inputs["completion_ids"].size(0)
        token_mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else \
            inputs["completion_mask"]
        total_tokens = token_mask.sum().clamp(min=1)
        bounds = [slice(s, min(s + per, n)) for s in range(0, n, per)]
        done = torch.zeros((), device=inputs["completion_ids"].device)
        for i, rows in enumerate(bounds):
            piece = self._piece(inputs, rows)
            if self.loss_type in _PER_SEQUENCE:
                weight = (rows.stop - rows.start) / n
            elif self.loss_type in _PER_TOKEN:
                weight = token_mask[rows].sum() / total_tokens
            else:
                weight = 1.0
            loss = self._compute_loss(model, piece) * weight
            if i == len(bounds) - 1:
                # The trainer backpropagates the last piece; earlier pieces only add their value to the log.
                return loss + done
            sync = self.accelerator.no_sync(model) if self.accelerator.num_processes > 1 else contextlib.nullcontext()
            with sync:
                self.accelerator.backward(loss)
            done = done + loss.detach()
        raise AssertionError("unreachable")

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, *args, **kwargs):
        # The no-grad passes (old policy, reference) run in pieces no larger than the training ones.
        per = self.sequences_per_forward
        if batch_size is not None and isinstance(per, int):
            batch_size = min(batch_size, per)
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                          batch_size, *args, **kwargs)


def trainer_args(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool, report_to: list[str]):
    g = recipe.train.grpo
    return GRPOConfig(
        **trainer_kwargs(recipe, checkpoints_dir, precision, has_eval, report_to),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        num_iterations=g.num_iterations,
        mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=rewards.weights(g.rewards),
        remove_unused_columns=False,  # the rewards read the extra columns
        log_completions=False,
    )


def build_rewards(recipe: Recipe, train_dataset) -> list:
    """Validate the recipe's rewards against the dataset (before any model work) and build them."""
    first = train_dataset[0] if len(train_dataset) else None
    columns = [c for c in train_dataset.column_names if c != "prompt"]
    return rewards.build(recipe.train.grpo.rewards, columns, first)


def build_trainer(recipe: Recipe, model, tokenizer, template, train_dataset, eval_dataset, checkpoints_dir: str,
                  precision: dict, report_to: list[str], callbacks: list, reward_funcs: list,
                  log=lambda _: None):
    args = trainer_args(recipe, checkpoints_dir, precision, eval_dataset is not None, report_to)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # Completions end on the template's stop tokens (end of turn), not only on the tokenizer's eos.
    base.generation_config.eos_token_id = templates.stop_token_ids(template, tokenizer)
    trainer = FtcliGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks)
    trainer.sequences_per_forward = recipe.train.grpo.sequences_per_forward
    trainer.remove_callback(PrinterCallback)
    use_base_as_reference(recipe, trainer)
    reason = logprobs.install(trainer.model, temperature=recipe.train.grpo.temperature,
                              outputs=("log_probs", "entropy"))
    log("log-probs: ftcli fused kernel" if reason is None else f"log-probs: TRL's chunked fused head ({reason})")
    return trainer


class GrpoStage:
    """Group-relative policy optimisation with the recipe's rewards (the Stage protocol, stages/base.py).

    The rewards are built and checked against the training rows with the datasets, before any model work.
    """

    name = "grpo"

    def __init__(self):
        self.reward_funcs: list = []

    def build_datasets(self, recipe: Recipe, train_rows: list, eval_rows: list, template, tokenizer, report):
        train = build_dataset(train_rows, template, tokenizer, recipe, report)
        self.reward_funcs = build_rewards(recipe, train)
        return train, (build_dataset(eval_rows, template, tokenizer, recipe, report) if eval_rows else None)

    def build_trainer(self, setup: TrainerSetup):
        return build_trainer(setup.recipe, setup.model, setup.tokenizer, setup.template, setup.train_set,
                             setup.eval_set, checkpoints_dir=setup.checkpoints_dir, precision=setup.precision,
                             report_to=setup.report_to, callbacks=setup.callbacks, reward_funcs=self.reward_funcs,
                             log=setup.log)

    def kernel_ops(self, requested, sharded: bool):
        # Log-probs go through the stage's own fused head (engine/logprobs.py), not the fused loss.
        return without_fused_loss(requested), None

    def finish(self, trainer) -> None:
        finish(trainer)

