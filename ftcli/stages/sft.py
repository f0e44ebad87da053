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

from ftcli.recipe import Recipe

# Test hook for the negative control of the gradient-accumulation test; never set in real runs.
EXACT_GA = True


class FtcliSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if EXACT_GA:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=num_items_in_batch)
        # The famous bug, reproduced on purpose: mean per micro-batch, then averaged over GA steps.
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)
        steps = self.current_gradient_accumulation_steps
        if return_outputs:
            return result[0] / steps, result[1]
        return result / steps


def trainer_args(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool, report_to: list[str]):
    """SFTConfig from the recipe: names follow TRL, so this is mostly a copy."""
    t = recipe.train
    eval_kwargs = {}
    if has_eval:
        eval_kwargs = {"eval_strategy": "steps" if t.eval_steps else "no", "eval_steps": t.eval_steps}
    return SFTConfig(
        output_dir=checkpoints_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5 reads a float in [0, 1) as a ratio of total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        gradient_checkpointing=False,  # models.add_lora enables it before PEFT wraps the model
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        report_to=report_to,
        max_length=recipe.model.max_seq_length,
        packing=t.packing,
        padding_free=t.packing,
        dataset_kwargs={"skip_prepare_dataset": False},
        remove_unused_columns=False,
        disable_tqdm=True,  # cli.py draws its own progress bar
        logging_first_step=True,
        **precision,
        **eval_kwargs,
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
    return trainer
