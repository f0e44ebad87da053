"""Apply a memory plan (plan.py) to a model: switch activation checkpointing on for the layers the plan
recomputes, through offload.py where their inputs go to CPU memory."""

from __future__ import annotations

from ftcli.engine import offload
from ftcli.engine.plan import Plan


def apply(model, plan: Plan) -> int:
    """Switch checkpointing on for the first `plan.recomputed` decoder layers; returns how many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # A training forward never reads a KV cache: without this, one that does not pass use_cache=False builds
    # one (memory for nothing, and transformers then ignores padding-free packing). generate() follows
    # generation_config.use_cache, not this.
    base.config.use_cache = False
    if plan.recomputed == 0:
        return 0
    # non-reentrant checkpointing, or ours with offload (and split blocks)
    return offload.enable(base, offload=plan.offload, layers=plan.recomputed, split=plan.split)


def decoder_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
