"""Trainable adapters on a loaded model: a new LoRA (QLoRA, DoRA, rsLoRA) or one continued from an earlier run."""

from __future__ import annotations

from pathlib import Path

from ftcli.errors import BadInput
from ftcli.models.hf_compat import enable_checkpointing
from ftcli.recipe import LoraSection


def add_lora(model, section: LoraSection | None, gradient_checkpointing: bool):
    """Wrap the model in a PEFT LoRA model (or leave it whole for a full finetune)."""
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if section is None:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        use_rslora=section.use_rslora,
        use_dora=section.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise BadInput(f"lora.target_modules {section.target_modules!r}: {str(err).splitlines()[0]}",
                       hint="use all-linear, or module names such as [q_proj, k_proj, v_proj, o_proj]") from None


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def continue_adapter(model, path: str, gradient_checkpointing: bool):
    """Load a LoRA adapter saved by an earlier run (e.g. runs/sft/adapter), trainable, on the base model."""
    from peft import PeftModel

    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise BadInput(f"model.adapter {path!r}: no adapter_config.json there",
                       hint="point it at the adapter/ folder of a finished LoRA run, e.g. runs/sft-.../adapter")
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as err:
        raise BadInput(f"model.adapter {path!r} does not fit model.name: {str(err).splitlines()[0]}",
                       hint="use the same base model the adapter was trained on") from None
