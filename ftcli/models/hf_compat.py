"""transformers names that changed inside the range we support (>=5.17,<6), in one place.

Newer 5.x releases call gradient checkpointing "activation checkpointing" and warn on the old names,
which v6 removes. Older ones only know the old names.
"""

from __future__ import annotations

import dataclasses
from functools import cache

NON_REENTRANT = {"use_reentrant": False}


@cache
def _new_names() -> bool:
    from transformers import TrainingArguments

    return "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}


def checkpointing_args(enabled: bool) -> dict:
    """TrainingArguments (and TRL config) keyword arguments that switch non-reentrant checkpointing."""
    name = "activation_checkpointing" if _new_names() else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": dict(NON_REENTRANT)}


def enable_checkpointing(model) -> None:
    """Non-reentrant checkpointing of every decoder layer of a transformers model."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(NON_REENTRANT))
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(NON_REENTRANT))


def hub_kernels_off(model) -> None:
    """Switch off transformers' own kernelization from the Hugging Face `kernels` package.

    Newer 5.x releases turn it on by default once `kernels` is installed, and re-run it on every
    train()/eval() switch: that pops the instance forwards ftcli's patch binds on decorated layers
    (RMSNorm), so the Trainer's model.train() silently put transformers' RMSNorm back. ftcli picks the
    kernels of a run itself (train.kernels), so a loaded model never kernelizes on its own.
    """
    if not getattr(model, "use_kernels", False):
        return
    reset = getattr(model, "reset_kernels", None)
    if reset is not None:
        reset()  # back to the torch forwards, and use_kernels off
    else:
        model.use_kernels = False
