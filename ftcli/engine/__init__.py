"""Engine: how a training step runs fast and fits. The memory estimate (memory.py) and the plan made from it
once per run (plan.py), activation checkpointing and offload (checkpointing.py, offload.py with its pinned host_buffers.py,
layer_blocks.py),
kernel patching (patch.py with causal_lm_head.py and window_attention.py), the fused log-prob head of DPO and
GRPO (logprobs.py), and processes (distributed.py).

The only package that imports ftcli.kernels. May import: ftcli.models, ftcli.data, ftcli.recipe, ftcli.errors.
"""
