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
from ftcli.data.packing import BlockDiagonalPacking, has_sliding_window
from ftcli.errors import BadInput
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
                             report_to=setup.report_to, callbacks=setup.callbacks)

    def kernel_ops(self, requested, sharded: bool):
        if not sharded:
            return requested, None
        # Under FSDP the fused loss would read lm_head's weight outside lm_head's forward, where FSDP gathers it.
        return (without_fused_loss(requested),
                "kernels: fused_linear_ce off under FSDP (the model's own lm_head + loss run instead)")

    def finish(self, trainer) -> None:
        pass

