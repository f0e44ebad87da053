"""A LoRA gated MLP in one autograd Function: down(act(gate(X)) * up(X)), each projection W + s B A.

Unfused, the three LoRA linears and the activation keep X, gate output e, up output g and the
product h = act(e) * g for backward: 2h-sized and 3 ffn-sized values per token. Here h is not
kept: the backward recomputes it from e and g (one elementwise pass, the Triton activation kernel)
for the only thing that needs it, the down adapter's dA = s dYB^T h. That is one ffn-sized tensor
less per token and layer (224 MiB at 8192 tokens on the Llama-3.1-8B shape), which is what lets
`train.memory: fast` keep more layers' activations and `lean` recompute a smaller layer.

The projections' products are the same cuBLAS calls as lora_linear.py (same precision rules,
fp32 adapters included); the two input gradients of gate and up accumulate into one buffer.
"""

from __future__ import annotations

import torch

from ._triton import LAUNCHES
from .lora_linear import _base_weight, adapter_grads, add_input_grad, lora_out, lowrank_grad_in, lowrank_in
from .swiglu import launch_bwd, launch_fwd


class LoRAMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, act, wg, ag, bg, sg, qg, wu, au, bu, su, qu, wd, ad, bd, sd, qd):
        LAUNCHES["lora_mlp"] += 1
        fwd, _ = act
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xa_g, xa_u = lowrank_in(x2, ag), lowrank_in(x2, au)
        e = lora_out(x2, _base_weight(wg, qg, x.dtype), xa_g, bg, sg)
        g = lora_out(x2, _base_weight(wu, qu, x.dtype), xa_u, bu, su)
        h = launch_fwd(fwd, e, g)
        xa_d = lowrank_in(h, ad)
        y = lora_out(h, _base_weight(wd, qd, x.dtype), xa_d, bd, sd)
        ctx.save_for_backward(x2, e, g, xa_g, xa_u, xa_d, wg, ag, bg, wu, au, bu, wd, ad, bd)
        ctx.act, ctx.scalings, ctx.quant, ctx.shape = act, (sg, su, sd), (qg, qu, qd), shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, e, g, xa_g, xa_u, xa_d, wg, ag, bg, wu, au, bu, wd, ad, bd = ctx.saved_tensors
        (sg, su, sd), (qg, qu, qd), (fwd, bwd) = ctx.scalings, ctx.quant, ctx.act
        dt = x2.dtype
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dt)
        # down: its adapter needs h, recomputed from e and g and dropped before dH = dY Wd + s dYB Ad
        # exists, so that at most three ffn-sized tensors are alive at once
        dyb_d = lowrank_grad_in(dy2, bd)
        h = launch_fwd(fwd, e, g)
        da_d, db_d = adapter_grads(dy2, h, xa_d, dyb_d, ad, bd, sd)
        del h
        dh = add_input_grad(None, dy2, _base_weight(wd, qd, dt), dyb_d, ad, sd)
        # e and g are dead after this: their gradients overwrite them (a second backward through this graph
        # fails autograd's saved-tensor version check instead of computing garbage)
        launch_bwd(bwd, dh, e, g, e, g)
        de, dg = e, g
        del dh
        # gate and up share X: their input gradients accumulate into one buffer
        dyb_g, dyb_u = lowrank_grad_in(de, bg), lowrank_grad_in(dg, bu)
        dx = add_input_grad(None, de, _base_weight(wg, qg, dt), dyb_g, ag, sg)
        dx = add_input_grad(dx, dg, _base_weight(wu, qu, dt), dyb_u, au, su)
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
