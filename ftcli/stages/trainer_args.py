"""What the DPO and GRPO stages share: trainer arguments from the recipe, and prompt messages."""

from __future__ import annotations

import importlib.util

import torch

from ftcli.engine import logprobs
from ftcli.errors import BadInput
from ftcli.models.hf_compat import checkpointing_args
from ftcli.recipe import Recipe


def trainer_kwargs(recipe: Recipe, checkpoints_dir: str, precision: dict, has_eval: bool,
                   report_to: list[str]) -> dict:
    """Arguments every TRL config takes, with the names TRL uses (the recipe follows them)."""
    t = recipe.train
    kwargs = dict(
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
        # models.add_lora switches checkpointing on before PEFT wraps the model; TRL must not do it again,
        # but when it toggles checkpointing around generation it re-enables it with these arguments.
        **checkpointing_args(False),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG states too: resume must be exact
        logging_nan_inf_filter=False,  # a NaN loss must be seen (guards.py stops the run), never averaged away
        report_to=report_to,
        disable_tqdm=True,  # cli.py draws its own progress bar
        logging_first_step=True,
        **precision,
    )
    if "use_cpu" in precision:
        # TRL's configs default to bf16 autocast; on the CPU the weights' own dtype is used, as in SFT.
        kwargs.update(bf16=False, fp16=False)
    if has_eval:
        kwargs.update(eval_strategy="steps" if t.eval_steps else "no", eval_steps=t.eval_steps)
    kwargs.update(distributed_kwargs(recipe))
    return kwargs


def distributed_kwargs(recipe: Recipe) -> dict:
    """DDP needs nothing; FSDP wraps each decoder layer (the class named by the model's _no_split_modules)."""
    if recipe.train.distributed != "fsdp":
        return {"ddp_find_unused_parameters": False}
    return {"fsdp": "full_shard auto_wrap",
            "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": True,
                            "sync_module_states": True, "cpu_ram_efficient_loading": False}}


def use_base_as_reference(recipe: Recipe, trainer) -> None:
    """A fresh LoRA adapter's reference is the base model with the adapter switched off.

    TRL copies any adapter it is handed into a frozen "ref" adapter (right for a continued
    adapter, model.adapter, whose starting point is the reference). Ours are created by
    models.add_lora with zero-initialised B, so the copy equals the base: drop it and let TRL
    fall back to disabling the adapter, which needs no extra weights.
    """
    model = trainer.model
    if recipe.model.adapter is None and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def finish(trainer) -> None:
    """After DPO or GRPO: drop TRL's frozen "ref" adapter (a continued adapter's copy) so only the
    trained one is saved, and take our log-prob hook off the model."""
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    logprobs.uninstall(model)


def precision_flags(dtype: torch.dtype) -> dict:
    """Trainer mixed-precision flags for the weights' dtype (none on CPU fp32)."""
    if not torch.cuda.is_available():
        return {"use_cpu": True}
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


REPORT_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def report_targets(setting="auto") -> list[str]:
    """The trainer's `report_to` for `train.report_to`: auto = TensorBoard (a dependency of ftcli), never a service
    that needs an account; a list passes through once each package is found."""
    if setting == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    if setting == "none":
        return []
    missing = [name for name in setting if importlib.util.find_spec(REPORT_PACKAGES[name]) is None]
    if missing:
        raise BadInput(f"train.report_to: {', '.join(missing)} is not installed",
                       hint="pip install " + " ".join(REPORT_PACKAGES[m] for m in missing))
    return list(setting)
