"""SFT stage: TRL's SFTTrainer on ready input_ids/labels, with exact gradient accumulation.

The loss of one optimizer step is the sum of per-token losses over every micro-batch (and
every process) divided by the number of trained label tokens in that whole step. The HF
Trainer counts that number (`num_items_in_batch`) before the step and TRL divides by it;
`EXACT_GA = False` switches back to the naive per-micro-batch mean, only so a test can
prove the difference.
"""

from __future__ import annotations

import torch
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from ftcli import guards
from ftcli.errors import BadInput
from ftcli.recipe import Recipe
from ftcli.stages.common import trainer_kwargs

# Test hook for the negative control of the gradient-accumulation test; never set in real runs.
EXACT_GA = True


class FtcliSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if EXACT_GA:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch=num_items_in_batch)
        else:
            # The famous bug, reproduced on purpose: mean per micro-batch, then averaged over GA steps.
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)
            steps = self.current_gradient_accumulation_steps
            result = (result[0] / steps, result[1]) if return_outputs else result / steps
        if not self.model.training:
            return result
        loss = guards.check_loss(result[0] if return_outputs else result, self.state.global_step + 1)
        return (loss, result[1]) if return_outputs else loss


def trainer_args(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool, report_to: list[str]):
    """SFTConfig from the recipe: the shared arguments plus SFT's own (names follow TRL)."""
    kwargs = trainer_kwargs(recipe, checkpoints_dir, precision, has_eval, report_to)
    return SFTConfig(
        **kwargs,
        max_length=recipe.model.max_seq_length,
        packing=recipe.train.packing,
        padding_free=recipe.train.packing,
        dataset_kwargs={"skip_prepare_dataset": False},
        remove_unused_columns=False,
    )


def build_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset, checkpoints_dir: str,
                  precision: dict, report_to: list[str], callbacks: list):
    args = trainer_args(recipe, checkpoints_dir, precision, eval_dataset is not None, report_to)
    trainer = FtcliSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    # Metrics go to metrics.jsonl and the progress bar; the Trainer's own dict printing is noise.
    trainer.remove_callback(PrinterCallback)
    if recipe.train.packing:
        attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
        if "flash" not in attn:
            if attn != "sdpa":
                raise BadInput(f"train.packing with attention {attn!r}: packed rows would attend to each other",
                               hint="use model.attn_implementation: sdpa (or flash_attention_2 on a GPU)")
            trainer.data_collator = BlockDiagonalPacking(trainer.data_collator, sliding=has_sliding_window(model))
    return trainer


def has_sliding_window(model) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "sliding_window", None))


class BlockDiagonalPacking:
    """Padding-free packing for SDPA: packed rows never attend to each other.

    TRL's padding-free batches tell rows apart by position_ids / cu_seq_lens, which flash attention
    reads. SDPA and eager read them only where transformers builds the mask itself: with no
    attention_mask and no KV cache (training runs without one, train.py). Otherwise each row would
    attend to the rows packed before it (measured here: logits off by ~5 on a tiny model).
    Full-attention models get an explicit [1, 1, T, T] block-diagonal causal mask (T² bits: 64 MiB
    for 8192 packed tokens). Sliding-window models get no mask: a custom 4-D mask replaces
    transformers' per-layer masks, so the local layers would lose their window (Gemma 3: logits off by
    ~4, tests/test_packing.py); transformers then composes the window with the packed rows itself.
    """

    def __init__(self, collator, sliding: bool = False):
        self.collator = collator
        self.sliding = sliding

    def __call__(self, examples):
        batch = self.collator(examples)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
            batch.pop(key, None)
        if self.sliding:
            batch.pop("attention_mask", None)  # position_ids alone: transformers finds the packed rows
            return batch
        positions = batch["position_ids"][0]
        segment = (positions == 0).cumsum(0)
        n = positions.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool, device=positions.device).tril()
        batch["attention_mask"] = (causal & (segment[:, None] == segment[None, :]))[None, None]
        return batch
