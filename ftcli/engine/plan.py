"""The memory plan of a run, made once: which decoder layers recompute their activations in backward,
whether their inputs live in CPU memory, and what that costs in GPU memory.

    machine = Machine.current()
    plan = for_recipe(recipe, config, machine)   # estimate -> plan, from the recipe and the model config
    check_fits(plan, recipe)                      # refuse a run that cannot fit, before loading weights
    checkpointing.apply(model, plan)              # and nothing recomputes it again

`train.memory` presets:
lean (default): every layer recomputes; on a GPU its saved input goes to pinned CPU memory
  (offload.py), so activations cost about one layer, whatever the depth.
minimal: lean, with each layer recomputed as an attention and an MLP block (layer_blocks.py), so
  activations cost about one block. Measured on an H200 it saves 0.47-0.59 GiB against lean on 8B shapes
  and costs 4-27% of the tokens/s (the extra host-side work per layer leaves the GPU idle), so it is not
  the default.
fast: recomputation is a +50% tax on the GEMM FLOPs of a LoRA step (research/kernels.md §1.2),
  so keep every layer's activations that fit in `train.memory_budget_gib` (default: 90% of the
  GPU memory free for the run) and recompute only the rest (their inputs offloaded, so that one
  more layer fits).
An explicit `gradient_checkpointing` (true / false / offload) overrides the preset. On the CPU
`auto` means off: there is no GPU memory to save.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftcli.engine import distributed, memory
from ftcli.errors import BadInput

GiB = memory.GiB
BUDGET_FRACTION = 0.9  # of the GPU memory this process can have, when fast has no explicit budget
HOST_FRACTION = 0.5    # of the host memory available to a process, what offloaded activations may pin
REFERENCE_GPU_BYTES = 80 * GiB  # the GPU `ftcli validate` plans for on a machine without one


@dataclass(frozen=True)
class Machine:
    """What this process can use: GPU memory (None without CUDA) and host memory it may pin."""

    gpu_bytes: float | None = None       # free plus what this process already holds
    gpu_free_bytes: float | None = None  # free right now
    host_bytes: float | None = None      # None: unknown, no limit applied

    @classmethod
    def current(cls) -> "Machine":
        import torch

        gpu = free = None
        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            gpu = free + torch.cuda.memory_reserved()
        return cls(gpu_bytes=gpu, gpu_free_bytes=free, host_bytes=host_bytes_for_run())

    def with_reference_gpu(self) -> "Machine":
        """This machine, or with an 80 GiB GPU where it has none (what `validate` plans for)."""
        if self.gpu_bytes is not None:
            return self
        return Machine(REFERENCE_GPU_BYTES, REFERENCE_GPU_BYTES, self.host_bytes)


@dataclass
class Plan:
    layers: int
    recomputed: int     # how many decoder layers recompute (the last ones keep their activations)
    offload: bool       # recomputed layers' inputs live in pinned CPU memory
    reason: str
    split: bool = False  # offloaded layers recompute attention and MLP as two blocks (layer_blocks.py)
    estimate: memory.Estimate | None = None  # peak GPU memory of this plan; None on the CPU
    gpu_bytes: float | None = None           # the GPU memory it was planned for

    def describe(self) -> str:
        offloaded = ", inputs offloaded to CPU" if self.offload and self.recomputed else ""
        split = ", attention and MLP recomputed separately" if self.split and self.recomputed else ""
        return f"{self.recomputed} of {self.layers} layers recompute{offloaded}{split} ({self.reason})"

    def describe_estimate(self) -> str | None:
        if self.estimate is None:
            return None
        e = self.estimate
        return (f"estimated peak GPU memory: {e.total / GiB:.1f} GiB "
                f"(weights {e.weights / GiB:.1f}, activations {e.activations / GiB:.1f})")

    def as_dict(self) -> dict:
        return {"recomputed_layers": self.recomputed, "layers": self.layers, "offload": self.offload,
                "split_blocks": self.split, "reason": self.reason}


def for_recipe(recipe, config, machine: Machine) -> Plan:
    """The plan for a validated recipe on `machine`, with its estimate (for a GPU machine only)."""
    shape = memory.Shape.from_config(config)
    kwargs = recipe_kwargs(recipe)
    on_gpu = machine.gpu_bytes is not None
    made = decide(recipe.train, shape, kwargs, on_gpu=on_gpu, gpu_bytes=machine.gpu_bytes or 0,
                  sharded=distributed.is_sharded(recipe), host_bytes=machine.host_bytes)
    if on_gpu:
        made.estimate = memory.estimate(shape, **kwargs, recomputed_layers=made.recomputed, offload=made.offload,
                                        split=made.split)
        made.gpu_bytes = machine.gpu_bytes
    return made


def check_fits(plan: Plan, recipe, machine: Machine) -> None:
    """Refuse, before any weight is loaded, a run whose estimate exceeds the GPU memory free now."""
    if plan.estimate is None or machine.gpu_free_bytes is None:
        return
    if plan.estimate.total > machine.gpu_free_bytes:
        raise BadInput(f"this recipe needs about {plan.estimate.total / GiB:.1f} GiB of GPU memory, "
                       f"{machine.gpu_free_bytes / GiB:.1f} GiB are free",
                       hint="try " + "; or ".join(advice(recipe)))


def decide(train, shape, estimate_kwargs: dict, *, on_gpu: bool, gpu_bytes: float, sharded: bool = False,
           host_bytes: float | None = None) -> Plan:
    """The plan for a recipe's train section on a model of `shape` (memory.Shape).

    `memory: minimal` splits layers into blocks where the architecture's layout is known, except when
    `sharded` (FSDP): FSDP reshards a layer's weights once their gradients have arrived, which with two
    blocks would happen between the MLP's backward and the attention's.
    `host_bytes`: how much pinned host memory offloading may use (None: no limit). Where the split's
    two hidden states per layer do not fit, layers recompute whole; where one does not, the inputs
    stay on the GPU."""
    split = train.memory == "minimal" and shape.splits_blocks and not sharded
    decided = _preset(train, shape, estimate_kwargs, on_gpu=on_gpu, gpu_bytes=gpu_bytes)
    decided.split = decided.offload and split
    if decided.offload and host_bytes is not None:
        _fit_host_memory(decided, shape, estimate_kwargs, host_bytes)
    return decided


def _fit_host_memory(decided: Plan, shape, estimate_kwargs: dict, host_bytes: float) -> None:
    def pinned(split: bool) -> float:
        return memory.offloaded_bytes(shape, **estimate_kwargs, recomputed_layers=decided.recomputed, split=split)

    room = f"{host_bytes / GiB:.1f} GiB of host memory to pin"
    if decided.split and pinned(True) > host_bytes:
        decided.split = False
        decided.reason += f"; layers recompute whole: split needs {pinned(True) / GiB:.1f} GiB, {room}"
    if pinned(False) > host_bytes:
        decided.offload = False
        decided.reason += f"; inputs stay on the GPU: offloading needs {pinned(False) / GiB:.1f} GiB, {room}"


def _preset(train, shape, estimate_kwargs: dict, *, on_gpu: bool, gpu_bytes: float) -> Plan:
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
    budget = train.memory_budget_gib * GiB if train.memory_budget_gib else BUDGET_FRACTION * gpu_bytes
    for recomputed in range(layers + 1):  # fewest recomputed layers whose estimate fits
        if memory.estimate(shape, **estimate_kwargs, recomputed_layers=recomputed, offload=True).total <= budget:
            break
    return Plan(layers, recomputed, recomputed > 0, f"memory: fast within {budget / GiB:.1f} GiB")


def recipe_kwargs(recipe) -> dict:
    """memory.estimate()'s arguments that follow from the recipe alone (not from the plan)."""
    return dict(
        batch=recipe.train.per_device_train_batch_size,
        seq=recipe.model.max_seq_length,
        dtype_bytes={"float32": 4, "float64": 8}.get(recipe.model.dtype, 2),
        load_in_4bit=recipe.model.load_in_4bit,
        lora_r=recipe.lora.r if recipe.lora else None,
        lora_targets=recipe.lora.target_modules if recipe.lora else "all-linear",
        fused_kernels=recipe.train.kernels is not False,
    )


def host_bytes_for_run() -> float | None:
    """Host memory this process may pin for offloaded activations: HOST_FRACTION of what the machine has
    available, shared by the processes on this node (None where /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return HOST_FRACTION * available / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def advice(recipe) -> list[str]:
    """Settings that make a run smaller, in the order they usually help most."""
    tips = []
    if recipe.train.gradient_checkpointing is False:
        tips.append("train.gradient_checkpointing: offload (recompute activations, layer inputs in CPU memory)")
    elif recipe.train.memory == "fast" and recipe.train.gradient_checkpointing == "auto":
        tips.append("train.memory: lean (recompute activations, layer inputs offloaded to CPU)")
    elif recipe.train.memory == "lean" and recipe.train.gradient_checkpointing == "auto":
        tips.append("train.memory: minimal (attention and MLP recomputed as separate blocks: about 0.5 GiB less "
                    "on 4-8B models at 8k tokens per step, 4-27% slower)")
    if recipe.train.per_device_train_batch_size > 1:
        tips.append(f"a smaller train.per_device_train_batch_size (now {recipe.train.per_device_train_batch_size}; "
                    "raise gradient_accumulation_steps to keep the effective batch)")
    tips.append(f"a shorter model.max_seq_length (now {recipe.model.max_seq_length})")
    if recipe.lora is None:
        tips.append("LoRA instead of a full finetune (add a lora: section)")
    elif not recipe.model.load_in_4bit:
        tips.append("model.load_in_4bit: true (QLoRA)")
    return tips
