"""Which decoder layers recompute their activations in backward: `train.memory` and
`train.gradient_checkpointing` turned into a plan, and the plan applied to a model.

lean (default): every layer recomputes; on a GPU its saved input goes to pinned CPU memory
  (ftcli/offload.py), so activations cost about one layer, whatever the depth.
minimal: lean, with each layer recomputed as an attention and an MLP block (ftcli/layer_blocks.py), so
  activations cost about one block. Measured on an H200 it saves 0.1-0.2 GiB against lean on 8B shapes
  and costs 5-6% of the tokens/s (the extra host-side work per layer leaves the GPU idle), so it is not
  the default.
fast: recomputation is a +50% tax on the GEMM FLOPs of a LoRA step (research/kernels.md §1.2),
  so keep every layer's activations that fit in `train.memory_budget_gib` (default: 90% of the
  GPU memory free for the run) and recompute only the rest (their inputs offloaded, so that one
  more layer fits).
An explicit `gradient_checkpointing` (true / false / offload) overrides the preset. On the CPU
`auto` means off: there is no GPU memory to save.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_FRACTION = 0.9  # of the GPU memory this process can have, when fast has no explicit budget


@dataclass
class Plan:
    layers: int
    recomputed: int     # how many decoder layers recompute (the last ones keep their activations)
    offload: bool       # recomputed layers' inputs live in pinned CPU memory
    reason: str
    split: bool = False  # offloaded layers recompute attention and MLP as two blocks (ftcli/layer_blocks.py)

    def describe(self) -> str:
        offloaded = ", inputs offloaded to CPU" if self.offload and self.recomputed else ""
        split = ", attention and MLP recomputed separately" if self.split and self.recomputed else ""
        return f"{self.recomputed} of {self.layers} layers recompute{offloaded}{split} ({self.reason})"

    def as_dict(self) -> dict:
        return {"recomputed_layers": self.recomputed, "layers": self.layers, "offload": self.offload,
                "split_blocks": self.split, "reason": self.reason}


def plan(train, shape, estimate_kwargs: dict, *, on_gpu: bool, gpu_bytes: float, sharded: bool = False,
         host_bytes: float | None = None) -> Plan:
    """The plan for a recipe's train section on a model of `shape` (memory.Shape).

    `memory: minimal` splits layers into blocks where the architecture's layout is known, except when
    `sharded` (FSDP): FSDP reshards a layer's weights once their gradients have arrived, which with two
    blocks would happen between the MLP's backward and the attention's.
    `host_bytes`: how much pinned host memory offloading may use (None: no limit). Where the split's
    two hidden states per layer do not fit, layers recompute whole; where one does not, the inputs
    stay on the GPU."""
    split = train.memory == "minimal" and shape.splits_blocks and not sharded
    decided = _decide(train, shape, estimate_kwargs, on_gpu=on_gpu, gpu_bytes=gpu_bytes)
    decided.split = decided.offload and split
    if decided.offload and host_bytes is not None:
        _fit_host_memory(decided, shape, estimate_kwargs, host_bytes)
    return decided


def _fit_host_memory(decided: Plan, shape, estimate_kwargs: dict, host_bytes: float) -> None:
    from ftcli import memory

    def pinned(split: bool) -> float:
        return memory.offloaded_bytes(shape, **estimate_kwargs, recomputed_layers=decided.recomputed, split=split)

    room = f"{host_bytes / memory.GiB:.1f} GiB of host memory to pin"
    if decided.split and pinned(True) > host_bytes:
        decided.split = False
        decided.reason += f"; layers recompute whole: split needs {pinned(True) / memory.GiB:.1f} GiB, {room}"
    if pinned(False) > host_bytes:
        decided.offload = False
        decided.reason += f"; inputs stay on the GPU: offloading needs {pinned(False) / memory.GiB:.1f} GiB, {room}"


def _decide(train, shape, estimate_kwargs: dict, *, on_gpu: bool, gpu_bytes: float) -> Plan:
    from ftcli import memory

    layers, choice = shape.layers, train.gradient_checkpointing
    if choice is False:
        return Plan(layers, 0, False, "gradient_checkpointing: false")
    if choice is True:
        return Plan(layers, layers, False, "gradient_checkpointing: true")
    if choice == "offload":
        return Plan(layers, layers, on_gpu, "gradient_checkpointing: offload" + ("" if on_gpu else " (no GPU: kept)"))
    if not on_gpu:
        return Plan(layers, 0, False, "no GPU: nothing to save by recomputing")
    if train.memory in ("lean", "minimal"):
        return Plan(layers, layers, True, f"memory: {train.memory}")
    budget = train.memory_budget_gib * memory.GiB if train.memory_budget_gib else BUDGET_FRACTION * gpu_bytes
    for recomputed in range(layers + 1):  # fewest recomputed layers whose estimate fits
        if memory.estimate(shape, **estimate_kwargs, recomputed_layers=recomputed, offload=True).total <= budget:
            break
    return Plan(layers, recomputed, recomputed > 0, f"memory: fast within {budget / memory.GiB:.1f} GiB")


def apply(model, plan: Plan) -> int:
    """Switch checkpointing on for the first `plan.recomputed` decoder layers; returns how many."""
    from ftcli import offload

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


def plan_for(recipe, config) -> Plan:
    """The plan for a recipe on this machine (the GPU memory free for the run decides `fast`)."""
    from ftcli import distributed, memory

    gpu_bytes = memory.gpu_bytes_for_run()
    return plan(recipe.train, memory.Shape.from_config(config), memory.recipe_kwargs(recipe),
                sharded=distributed.is_sharded(recipe), on_gpu=gpu_bytes is not None, gpu_bytes=gpu_bytes or 0,
                host_bytes=memory.host_bytes_for_run())
