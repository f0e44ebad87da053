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
