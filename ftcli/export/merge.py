"""merged/: the LoRA adapter merged into the 16-bit base, in the plain Hugging Face layout.

For QLoRA the base is reloaded in 16 bits from the original weights and the adapter is
merged into that, never into dequantised 4-bit weights (which would bake the 4-bit
rounding error into every merged layer).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftcli.files import atomic_dir
from ftcli.models.pretrained import resolve_name


def merge_adapter(base_name: str, adapter_dir: Path, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load the 16-bit base, apply the adapter and fold it into the weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_name(base_name), dtype=dtype,
                                                trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.merge_and_unload()


def save_merged(model, tokenizer, template_source: str | None, out: Path, state_dict: dict | None = None) -> Path:
    """Write model, tokenizer (with the training chat template) and generation_config atomically.
    `state_dict`: the full weights gathered from FSDP shards (the model's own are sharded then)."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if template_source is not None:
            tokenizer.chat_template = template_source
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
    return out
