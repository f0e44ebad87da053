"""Load the base model, its config and its tokenizer from a hub id, a local folder or builtin:."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ftcli.errors import BadInput, MissingPackage
from ftcli.models import builtin, hf_compat, offline
from ftcli.recipe import ModelSection

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def resolve_name(name: str) -> str:
    """A builtin name becomes its cached folder; a hub id while offline its cached copy (or a clear BadInput at
    once, not half a minute of retries); anything else is passed to from_pretrained as is."""
    if builtin.is_builtin(name):
        try:
            return str(builtin.builtin_path(name))
        except builtin.BuiltinError as err:
            raise BadInput(str(err)) from None
    if offline.looks_like_hub_id(name):
        return offline.local_or_fail(name) or name
    return name


def pick_dtype(section: ModelSection) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, else fp16 on a GPU, fp32 on the CPU."""
    if section.dtype != "auto":
        return DTYPES[section.dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(compute_dtype: torch.dtype):
    """nf4 with double quantisation: the QLoRA recipe."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingPackage("bitsandbytes", "model.load_in_4bit (QLoRA)", "pip install 'ftcli[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def load_tokenizer(section: ModelSection):
    from transformers import AutoTokenizer

    path = resolve_name(section.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=section.trust_remote_code)
    except OSError as err:
        raise BadInput(f"model.name {section.name!r}: could not load a tokenizer ({str(err).splitlines()[0]})",
                       hint="use a Hugging Face id, a local model folder, or a builtin such as "
                            f"{offline.builtin_for(section.name)} (builtin:tiny-llama3, tiny-gemma3, tiny-qwen3, "
                            "tiny-phi3, tiny-mistral)") from None
    if tokenizer.pad_token is None:
        # Padding positions never enter the loss, but the pad id must exist to batch at all.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(section: ModelSection):
    """The model's config (read once per run: the memory plan and the model load share it)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_name(section.name), trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError) as err:
        raise BadInput(f"model.name {section.name!r}: {str(err).splitlines()[0]}",
                       hint=f"check the id or folder; offline, use {offline.builtin_for(section.name)} or a local "
                            "folder") from None


def load(section: ModelSection, config=None):
    """(model, tokenizer) for a recipe's model section; `config`: its load_config, when already read."""
    from transformers import AutoModelForCausalLM

    path = resolve_name(section.name)
    dtype = pick_dtype(section)
    config = config if config is not None else load_config(section)
    kwargs = {"dtype": dtype, "trust_remote_code": section.trust_remote_code}
    if section.attn_implementation != "auto":
        kwargs["attn_implementation"] = section.attn_implementation
    if section.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err) or "does not recognize" in str(err):
            raise BadInput(f"model.name {section.name!r}: architecture {config.model_type!r} is not a "
                           "causal language model that transformers can load") from None
        raise
    hf_compat.hub_kernels_off(model)  # ftcli chooses the kernels (train.kernels), not the hub
    tokenizer = load_tokenizer(section)
    if torch.cuda.is_available() and not section.load_in_4bit:
        model = model.to("cuda")
    return model, tokenizer


def is_local_folder(name: str) -> bool:
    return Path(name).is_dir()
