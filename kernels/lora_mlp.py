"""A LoRA gated MLP in one autograd Function: down(act(gate(X)) * up(X)), each projection W + s B A.

Unfused, the three LoRA linears and the activation keep X, gate output e, up output g and the
product h = act(e) * g for backward: 2h-sized and 3 ffn-sized values per token. Here h is not
kept: the backward recomputes it from e and g (one elementwise pass, the Triton activation kernel)
for the only thing that needs it, the down adapter's dA = s dYB^T h. That is one ffn-sized tensor
less per token and layer (224 MiB at 8192 tokens on the Llama-3.1-8B shape), which is what lets
`train.memory: fast` keep more layers' activations and `lean` recompute a smaller layer.

h, and in backward its gradient dH, exist only CHUNK_ROWS rows at a time: the product is made, used
by the down projection (forward) or by dA and dH -> de, dg (backward), and dropped chunk by chunk, so
beside e and g at most a chunk's ffn-sized temporary is alive (on the Qwen3-8B shape at 8192 tokens,
48 MiB instead of 192). The gate and up input gradients then run whole, on full-height GEMMs.

Under `output_unused()` (a checkpoint's recompute whose caller only backpropagates through the
output) the forward skips the down projection, a quarter of a Llama-style layer's GEMM work, and
returns zeros of the output's shape: the backward needs e, g and X A_down^T, never Y.

The projections' products are the same cuBLAS calls as lora_linear.py (same precision rules,
fp32 adapters included); the two input gradients of gate and up accumulate into one buffer.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from ._triton import LAUNCHES
from .lora_linear import (base_weight, adapter_grads, add_input_grad, dyb_operand, lora_a_grad, lora_out,
                          lowrank_grad_in, lowrank_in, lowrank_operand)
from .swiglu import launch_bwd, launch_fwd

# rows of h / dH made at a time: four chunks at 8192 tokens, GEMMs of 2048 x 4096 x 12288 (Qwen3-8B) still run
# at full speed on an H200 (docs/benchmarks.md, 2026-12-02 lean-recompute runs)
CHUNK_ROWS = 2048

_OUTPUT_UNUSED = contextvars.ContextVar("ftcli_lora_mlp_output_unused", default=False)


@contextlib.contextmanager
def output_unused():
    """Inside, lora_mlp returns zeros instead of its output (and skips the down projection); its backward is
    unchanged. Only for a caller that never reads the output's values, e.g. a recompute where the MLP output
    only enters a residual add whose result is backpropagated through and dropped."""
    token = _OUTPUT_UNUSED.set(True)
    try:
        yield
    finally:
        _OUTPUT_UNUSED.reset(token)


def _row_chunks(rows: int) -> list[slice]:
    step = max(1, CHUNK_ROWS)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)] or [slice(0, 0)]


class LoRAMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act, wg, ag, bg, sg, qg, wu, au, bu, su, qu, wd, ad, bd, sd, qd):
        LAUNCHES["lora_mlp"] += 1
        fwd, _ = act
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xa_g, xa_u = lowrank_in(x2, ag), lowrank_in(x2, au)
        e = lora_out(x2, base_weight(wg, qg, x.dtype), xa_g, bg, sg)
        g = lora_out(x2, base_weight(wu, qu, x.dtype), xa_u, bu, su)
        skip_output = _OUTPUT_UNUSED.get()
        wd_full = None if skip_output else base_weight(wd, qd, x.dtype)
        y = None if skip_output else x2.new_empty(x2.shape[0], wd_full.shape[0])
        ad_op = lowrank_operand(ad, x.dtype)  # made once for all row chunks
        xa_parts = []
        for rows in _row_chunks(x2.shape[0]):
            h = launch_fwd(fwd, e[rows], g[rows])
            xa_parts.append(lowrank_in(h, ad, ad_op))
            if y is not None:
                lora_out(h, wd_full, xa_parts[-1], bd, sd, out=y[rows])
            del h
        xa_d = xa_parts[0] if len(xa_parts) == 1 else torch.cat(xa_parts)
        ctx.save_for_backward(x2, e, g, xa_g, xa_u, xa_d, wg, ag, bg, wu, au, bu, wd, ad, bd)
        ctx.act, ctx.scalings, ctx.quant, ctx.shape = act, (sg, su, sd), (qg, qu, qd), shape
        if y is None:  # nothing reads it: zeros that take no memory
            return x2.new_zeros(()).expand(*shape[:-1], bd.shape[0])
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, e, g, xa_g, xa_u, xa_d, wg, ag, bg, wu, au, bu, wd, ad, bd = ctx.saved_tensors
        (sg, su, sd), (qg, qu, qd), (fwd, bwd) = ctx.scalings, ctx.quant, ctx.act
        dt = x2.dtype
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dt)
        dyb_d = lowrank_grad_in(dy2, bd)
        _, db_d = adapter_grads(dy2, x2, xa_d, dyb_d, ad, bd, sd, need_da=False)
        wd_full = base_weight(wd, qd, dt)
        # down, chunk by chunk: its adapter needs h (recomputed from e and g), its input gradient dH turns into
        # de, dg at once. e and g are dead after this: their gradients overwrite them (a second backward through
        # this graph fails autograd's saved-tensor version check instead of computing garbage)
        dyb_op = dyb_operand(dyb_d, ad, dt)  # made once for all row chunks
        da_d = None
        for rows in _row_chunks(x2.shape[0]):
            h = launch_fwd(fwd, e[rows], g[rows])
            da = lora_a_grad(dyb_op[rows], h, ad)
            da_d = da if da_d is None else da_d.add_(da)
            del h
            dh = add_input_grad(None, dy2[rows], wd_full, dyb_d[rows], ad, sd)
            launch_bwd(bwd, dh, e[rows], g[rows], e[rows], g[rows])
            del dh
        da_d.mul_(sd)
        de, dg = e, g
        # gate and up share X: their input gradients accumulate into one buffer
        dyb_g, dyb_u = lowrank_grad_in(de, bg), lowrank_grad_in(dg, bu)
        dx = add_input_grad(None, de, base_weight(wg, qg, dt), dyb_g, ag, sg)
        dx = add_input_grad(dx, dg, base_weight(wu, qu, dt), dyb_u, au, su)
        da_g, db_g = adapter_grads(de, x2, xa_g, dyb_g, ag, bg, sg)
        da_u, db_u = adapter_grads(dg, x2, xa_u, dyb_u, au, bu, su)
        return (dx.view(ctx.shape), None, None, da_g, db_g, None, None, None, da_u, db_u, None, None,
                None, da_d, db_d, None, None)


def lora_mlp(x: torch.Tensor, activation: str, gate: tuple, up: tuple, down: tuple) -> torch.Tensor:
    """down(act(gate(x)) * up(x)) with LoRA on all three; each projection is (W, A, B, scaling, quant_state).

    `activation`: "swiglu" (silu) or "geglu" (Gemma's tanh GELU). W may be bitsandbytes 4-bit data with
    its QuantState (QLoRA); it is dequantised into the shared buffer right before each use.
    """
    return LoRAMLPFunction.apply(x, _kernels(activation), *gate, *up, *down)


def lora_mlp_reference(x, activation, gate, up, down):
    """Plain PyTorch, as PEFT + transformers compute the MLP (dropout 0)."""
    from .geglu import geglu_reference
    from .lora_linear import lora_linear_reference
    from .swiglu import swiglu_reference

    act = swiglu_reference if activation == "swiglu" else geglu_reference

    def proj(t, p):
        w, a, b, s, q = p
        return lora_linear_reference(t, w, a, b, s, None, q)

    return proj(act(proj(x, gate), proj(x, up)), down)


def _kernels(activation: str):
    if activation == "swiglu":
        from .swiglu import swiglu_bwd, swiglu_fwd

        return swiglu_fwd, swiglu_bwd
    if activation == "geglu":
        from .geglu import geglu_bwd, geglu_fwd

        return geglu_fwd, geglu_bwd
    raise ValueError(f"lora_mlp: unknown activation {activation!r} (swiglu or geglu)")
