"""SFT stage: TRL's SFTTrainer on ready input_ids/labels, with exact gradient accumulation.

The loss of one optimizer step is the sum of per-token losses over every micro-batch (and
every process) divided by the number of trained label tokens in that whole step. The HF
Trainer counts that number (`num_items_in_batch`) before the step and TRL divides by it;
`EXACT_GA = False` switches back to the naive per-micro-batch mean, only so a test can
prove the difference.
"""

from __future__ import annotations

from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from ftcli.stages import guards
from ftcli.data import supervised
from ftcli.data.packing import PaddingFreePacking, bin_stats
from ftcli.engine import patch
from ftcli.recipe import Recipe
from ftcli.stages.base import TrainerSetup, without_fused_loss
from ftcli.stages.trainer_args import trainer_kwargs

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


def trainer_args(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool, report_to: list[str],
                 packing: bool | None = None):
    """SFTConfig from the recipe: the shared arguments plus SFT's own (names follow TRL). `packing`: the
    decision for `train.packing` (packing_decision); unpacked batches pad to their longest row and each
    optimizer step's rows are grouped by length, so there is little padding to compute."""
    kwargs = trainer_kwargs(recipe, checkpoints_dir, precision, has_eval, report_to)
    packing = recipe.train.packing is True if packing is None else packing
    return SFTConfig(
        **kwargs,
        max_length=recipe.model.max_seq_length,
        packing=packing,
        padding_free=packing,
        packing_strategy="bfd",  # best-fit decreasing bins of max_length, sequences kept whole
        train_sampling_strategy="random" if packing else "group_by_length",
        dataset_kwargs={"skip_prepare_dataset": False},
        remove_unused_columns=False,
    )


def packing_decision(recipe: Recipe, model) -> tuple[bool, str]:
    """(pack?, how packed rows attend, in words). `auto` packs only where packed rows run as one varlen
    FlashAttention call; `true` packs anyway, on transformers' block-diagonal mask (exact, slower)."""
    blocker = patch.packed_attention_blocker(model, recipe.train.kernels)
    fast = "attention: one variable-length FlashAttention call per layer, no mask, no padding"
    if recipe.train.packing is False:
        return False, "packing: off (train.packing: false); batches padded to their longest row, grouped by length"
    if blocker is None:
        return True, fast
    if recipe.train.packing == "auto":
        return False, (f"packing: off (train.packing: auto, and packed rows would not run as varlen FlashAttention "
                       f"here: {blocker}); batches padded to their longest row, grouped by length")
    return True, f"attention: SDPA with transformers' block-diagonal mask (exact; varlen FlashAttention needs: {blocker})"


def build_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset, checkpoints_dir: str,
                  precision: dict, report_to: list[str], callbacks: list, log=lambda _: None):
    packing, how = packing_decision(recipe, model)
    args = trainer_args(recipe, checkpoints_dir, precision, eval_dataset is not None, report_to, packing)
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
    if packing:
        trainer.data_collator = PaddingFreePacking(trainer.data_collator)
        s = bin_stats(trainer.train_dataset, recipe.model.max_seq_length)
        log(f"packing: on · {s['sequences']} sequences in {s['bins']} bins of {recipe.model.max_seq_length} tokens "
            f"({s['fill']:.1%} full, {s['sequences_per_bin']:.1f} per bin) · {how}")
    else:
        log(how)
    return trainer


class SftStage:
    """Supervised finetuning on ready input_ids/labels (the Stage protocol, stages/base.py)."""

    name = "sft"

    def build_datasets(self, recipe: Recipe, train_rows: list, eval_rows: list, template, tokenizer, report):
        def build(rows):
            return supervised.build_sft(rows, template, tokenizer, recipe.template.train_on,
                                        recipe.model.max_seq_length, report)
        return build(train_rows), (build(eval_rows) if eval_rows else None)

    def build_trainer(self, setup: TrainerSetup):
        return build_trainer(setup.recipe, setup.model, setup.tokenizer, setup.train_set, setup.eval_set,
                             checkpoints_dir=setup.checkpoints_dir, precision=setup.precision,
                             report_to=setup.report_to, callbacks=setup.callbacks, log=setup.log)

    def kernel_ops(self, requested, sharded: bool):
        if not sharded:
            return requested, None
        # Under FSDP the fused loss would read lm_head's weight outside lm_head's forward, where FSDP gathers it.
        return (without_fused_loss(requested),
                "kernels: fused_linear_ce off under FSDP (the model's own lm_head + loss run instead)")

    def finish(self, trainer) -> None:
        pass

