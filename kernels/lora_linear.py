"""Fused LoRA linear: Y = X W^T + s (X A^T) B^T (+ bias) in one autograd Function (dropout 0).

W [out, in] is the frozen base weight (a plain tensor, or bitsandbytes NF4/FP4 data plus its
QuantState: QLoRA), A [r, in], B [out, r], s = lora_alpha / r (or / sqrt(r) for rsLoRA).

Every product is a cuBLAS GEMM; the fusion is in what is computed, saved and written:
Forward:   XA = X A^T                       [rows, r]
           Y  = X W^T (+ bias), then Y += s * XA B^T in place (addmm_: no second output tensor)
Backward (W frozen: no dW GEMM is ever issued):
           dYB = dY B                       [rows, r], computed once for dX and dA
           dX  = dY W, then dX += s * dYB A in place
           dA  = s * dYB^T X,   dB = s * dY^T XA   (rank-r products first: no [out, in] temporary)
Saved for backward: X and XA (rows x r) plus references to W, A, B. PEFT also keeps an fp32 copy
of X per adapter when its adapters are fp32. QLoRA: W is dequantised into one buffer per
(device, dtype) reused by every layer, in the forward and again in the backward; never saved.

Why cuBLAS and not a Triton GEMM with the low-rank product as an extra K stretch (our first
version): on an H200 at 8192 rows that Triton kernel ran 1.6-2x slower than cuBLAS's base GEMM
plus the in-place low-rank addmm_ (docs/kernels.md has the figures).

Precision: every GEMM takes the activation dtype with fp32 accumulation. With fp32 adapters
(PEFT's autocast_adapter_dtype) on bf16 activations, the rank-r operands enter as hi + lo bf16
pairs (`_hi_lo`) and the [rows, r] products are kept in fp32, so the adapter path and the adapter
gradients are about as exact as PEFT's fp32 arithmetic while no fp32 copy of X is ever made. In
float32/float64 every product is exact to that dtype's rounding.
"""

from __future__ import annotations

import torch

from ._triton import LAUNCHES

# ---------------------------------------------------------------------------------------------
# QLoRA: dequantise into one reused buffer

_BUFFERS: dict[tuple, torch.Tensor] = {}


def dequantize(weight: torch.Tensor, quant_state, reuse: bool = True) -> torch.Tensor:
    """The bf16/fp16/fp32 weight [out, in] of a bitsandbytes 4-bit weight (no-op for a plain tensor).

    With `reuse`, the result lives in a per-(device, dtype) buffer shared by all layers: valid until
    the next call. On CPU bitsandbytes has no out= kernel, so the result is copied into the buffer.
    """
    if quant_state is None:
        return weight
    import bitsandbytes.functional as bnbf

    shape, dtype = tuple(quant_state.shape), quant_state.dtype
    if not reuse:
        return bnbf.dequantize_4bit(weight, quant_state)
    numel = shape[0] * shape[1]
    key = (weight.device, dtype)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = _BUFFERS[key] = torch.empty(numel, dtype=dtype, device=weight.device)
    out = buf[:numel].view(shape)
    try:
        bnbf.dequantize_4bit(weight, quant_state, out=out)
    except NotImplementedError:
        out.copy_(bnbf.dequantize_4bit(weight, quant_state))
    return out


def base_weight(weight, quant_state, dtype):
    w = dequantize(weight, quant_state)
    return w if w.dtype == dtype else w.to(dtype)


def _mm_into(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b returned in `dtype`: on CUDA a bf16 product is not rounded to bf16 on the way."""
    if a.dtype == dtype:
        return torch.mm(a, b)
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return torch.mm(a, b).to(dtype)


def _hi_lo(t: torch.Tensor, dtype: torch.dtype, dim: int) -> torch.Tensor:
    """t (fp32) as [hi, lo] in `dtype` concatenated along `dim`: hi + lo carries ~16 bits of t's mantissa.

    The rank-r operands are tiny, so doubling them costs nothing in a product whose time is one pass
    over the big [rows, in] operand, and it keeps fp32 adapters (PEFT's default) about as exact as
    PEFT's own fp32 arithmetic without ever making an fp32 copy of the activations.
    """
    hi = t.to(dtype)
    return torch.cat([hi, (t - hi.to(t.dtype)).to(dtype)], dim=dim)


def _fold(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum the hi and lo halves of a product taken with a `_hi_lo` operand."""
    first, second = t.chunk(2, dim=dim)
    return first + second


def _is_precise(adapter: torch.Tensor, activation_dtype: torch.dtype) -> bool:
    """fp32 adapters on bf16/fp16 activations: keep the rank-r path in the adapter dtype."""
    return adapter.dtype.itemsize > activation_dtype.itemsize


def lowrank_operand(lora_a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A^T as `lowrank_in` multiplies by it (hi + lo pairs for a wider adapter): made once for many calls."""
    return _hi_lo(lora_a, dtype, 0).t() if _is_precise(lora_a, dtype) else lora_a.to(dtype).t()


def lowrank_in(x2: torch.Tensor, lora_a: torch.Tensor, a_operand: torch.Tensor | None = None) -> torch.Tensor:
    """XA = X A^T [rows, r]: in the adapter dtype when it is wider than X's. `a_operand`: lowrank_operand's."""
    op = lowrank_operand(lora_a, x2.dtype) if a_operand is None else a_operand
    if _is_precise(lora_a, x2.dtype):
        return _fold(_mm_into(x2, op, lora_a.dtype), 1)
    return torch.mm(x2, op)


def lora_out(x2, w, xa, lora_b, scaling, bias=None, out=None) -> torch.Tensor:
    """Y = X W^T (+ bias), then Y += s XA B^T in place; into `out` when given (rows of a bigger Y)."""
    y = torch.mm(x2, w.t(), out=out) if bias is None else torch.addmm(bias.to(x2.dtype), x2, w.t(), out=out)
    return y.addmm_(xa.to(x2.dtype), lora_b.to(x2.dtype).t(), alpha=scaling)


def lowrank_grad_in(dy2: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """dYB = dY B [rows, r], in the adapter dtype when it is wider than dY's."""
    if _is_precise(lora_b, dy2.dtype):
        return _fold(_mm_into(dy2, _hi_lo(lora_b, dy2.dtype, 1), lora_b.dtype), 1)
    return torch.mm(dy2, lora_b.to(dy2.dtype))


def add_input_grad(dx, dy2, w, dyb, lora_a, scaling) -> torch.Tensor:
    """dX (+)= dY W + s dYB A; dx None starts a new tensor."""
    dx = torch.mm(dy2, w) if dx is None else dx.addmm_(dy2, w)
    return dx.addmm_(dyb.to(dy2.dtype), lora_a.to(dy2.dtype), alpha=scaling)


def dyb_operand(dyb: torch.Tensor, lora_a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dYB as `lora_a_grad` multiplies by it (hi + lo pairs for a wider adapter): made once for many row chunks."""
    return _hi_lo(dyb, dtype, 1) if _is_precise(lora_a, dtype) else dyb.to(dtype)


def lora_a_grad(dyb_op: torch.Tensor, x2: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    """dYB^T X in the adapter's dtype, unscaled (dA = s dYB^T X); dyb_op from `dyb_operand`."""
    if _is_precise(lora_a, x2.dtype):
        return _fold(_mm_into(dyb_op.t(), x2, lora_a.dtype), 0)
    return _mm_into(dyb_op.t(), x2, lora_a.dtype)


def adapter_grads(dy2, x2, xa, dyb, lora_a, lora_b, scaling, need_da=True, need_db=True):
    """dA = s dYB^T X and dB = s dY^T XA in the adapters' dtypes (rank-r products first)."""
    dt, da, db = x2.dtype, None, None
    if need_da:
        da = lora_a_grad(dyb_operand(dyb, lora_a, dt), x2, lora_a).mul_(scaling)
    if need_db:
        db = (_fold(_mm_into(dy2.t(), _hi_lo(xa, dt, 1), lora_b.dtype), 1) if _is_precise(lora_b, dt)
              else _mm_into(dy2.t(), xa.to(dt), lora_b.dtype)).mul_(scaling)
    return da, db


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scaling, bias, quant_state):
        LAUNCHES["lora_linear"] += 1  # tests check that this Function ran (it has no Triton kernel of its own)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = base_weight(weight, quant_state, x.dtype)
        xa = lowrank_in(x2, lora_a)
        y = lora_out(x2, w, xa, lora_b, scaling, bias)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, xa, bias)
        ctx.scaling, ctx.quant_state, ctx.shape = scaling, quant_state, shape
        return y.view(*shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, lora_a, lora_b, xa, bias = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        need_dx, need_dw, need_da, need_db, _, need_dbias, _ = ctx.needs_input_grad
        dyb = lowrank_grad_in(dy2, lora_b)
        dx = dw = dbias = None
        if need_dx:
            dx = add_input_grad(None, dy2, base_weight(weight, ctx.quant_state, x2.dtype), dyb, lora_a, s)
            dx = dx.view(ctx.shape)
        da, db = adapter_grads(dy2, x2, xa, dyb, lora_a, lora_b, s, need_da, need_db)
        if need_dw:  # a trainable base weight (not LoRA's use): plain dW
            dw = torch.mm(dy2.t(), x2).to(weight.dtype)
        if need_dbias:
            dbias = dy2.float().sum(0).to(bias.dtype)
        return dx, dw, da, db, None, dbias, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float, bias: torch.Tensor | None = None, quant_state=None) -> torch.Tensor:
    """`x @ W^T + scaling * (x @ A^T) @ B^T (+ bias)` in one Function; `quant_state` given: W is bnb 4-bit data."""
    return LoRALinearFunction.apply(x, weight, lora_a, lora_b, float(scaling), bias, quant_state)


def lora_linear_reference(x, weight, lora_a, lora_b, scaling, bias=None, quant_state=None):
    """Plain PyTorch, as PEFT's lora.Linear computes it with dropout 0."""
    w = dequantize(weight, quant_state, reuse=False) if quant_state is not None else weight
    result = torch.nn.functional.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    xa = x.to(lora_a.dtype)
    lora = torch.nn.functional.linear(torch.nn.functional.linear(xa, lora_a), lora_b) * scaling
    return (result + lora).to(result.dtype)
