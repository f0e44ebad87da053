"""Fused LoRA linear: Y = X W^T + s (X A^T) B^T (+ bias) in one autograd Function (dropout 0).

W [out, in] is the frozen base weight (a plain tensor, or bitsandbytes NF4/FP4 data plus its
QuantState: QLoRA), A [r, in], B [out, r], s = lora_alpha / r (or / sqrt(r) for rsLoRA).

Forward: XA = X A^T (a skinny torch GEMM, [rows, r]), then one Triton GEMM computes
X W^T + s * XA B^T (+ bias) into a single fp32 accumulator and writes the output once: the
low-rank product is an extra K = r stretch of the same tile loop, not a second pass over Y.
Backward (W frozen: no dW GEMM is ever issued):
  dYB = dY B                                  [rows, r]
  dX  = dY W + s * dYB A                      one Triton GEMM, same kernel, written once
  dA  = s * dYB^T X,   dB = s * dY^T XA       rank-r products formed first (no [out, in] temporary)
Saved for backward: X (its own dtype), XA (rows x r), and references to W, A, B: PEFT keeps an
fp32 copy of X and more. QLoRA: W is dequantised into one buffer per (device, dtype) reused by every
layer (the largest weight's size), in the forward and again in the backward; it is never saved.

Precision matches PEFT's: the base product in the activation dtype with fp32 accumulation, the
low-rank path in the adapter dtype (fp32 when PEFT autocasts adapters, then computed as exact fp32
products: Triton's `ieee` precision, not TF32), one rounding of the sum to the activation dtype.
"""

from __future__ import annotations

import torch

from ._triton import acc_type, kernel, next_pow2

try:
    import triton
    import triton.language as tl

    _CONFIGS = [
        triton.Config(dict(BM=128, BN=128, BK=64, GROUP_M=8), num_warps=8, num_stages=3),
        triton.Config(dict(BM=128, BN=256, BK=64, GROUP_M=8), num_warps=8, num_stages=3),
        triton.Config(dict(BM=256, BN=128, BK=64, GROUP_M=8), num_warps=8, num_stages=3),
        triton.Config(dict(BM=64, BN=256, BK=64, GROUP_M=8), num_warps=4, num_stages=4),
        triton.Config(dict(BM=128, BN=64, BK=64, GROUP_M=8), num_warps=4, num_stages=4),
        triton.Config(dict(BM=64, BN=128, BK=64, GROUP_M=8), num_warps=4, num_stages=4),
    ]
except ImportError:
    triton = tl = None
    _CONFIGS = None

#: Meta-parameters under the CPU interpreter (small tiles: masked edges get exercised on small shapes).
INTERPRET_META = dict(BM=32, BN=64, BK=32, GROUP_M=2)


@kernel(configs=_CONFIGS, key=["M", "N", "K1", "K2", "HAS_BIAS"], interpret_meta=INTERPRET_META)
def lora_mm(A1, B1, A2, B2, BIAS, C, M, N, K1, K2, scale,
            s_a1m, s_a1k, s_b1k, s_b1n, s_a2m, s_a2k, s_b2k, s_b2n, s_cm, s_cn,
            HAS_BIAS: tl.constexpr, IEEE2: tl.constexpr, BK2: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, ACC: tl.constexpr):
    """C = A1 @ B1 + scale * (A2 @ B2) (+ bias), all strides explicit, fp32 accumulation."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    m_ok = rm < M
    n_ok = rn < N

    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=ACC)
    a_ptr = A1 + rm[:, None] * s_a1m + rk[None, :] * s_a1k
    b_ptr = B1 + rk[:, None] * s_b1k + rn[None, :] * s_b1n
    for k in range(0, K1, BK):
        k_ok = (rk + k) < K1
        a = tl.load(a_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptr += BK * s_a1k
        b_ptr += BK * s_b1k

    rk2 = tl.arange(0, BK2)
    acc2 = tl.zeros((BM, BN), dtype=ACC)
    for k in range(0, K2, BK2):
        k_ok = (rk2 + k) < K2
        a2 = tl.load(A2 + rm[:, None] * s_a2m + (rk2 + k)[None, :] * s_a2k, mask=m_ok[:, None] & k_ok[None, :],
                     other=0.0)
        b2 = tl.load(B2 + (rk2 + k)[:, None] * s_b2k + rn[None, :] * s_b2n, mask=k_ok[:, None] & n_ok[None, :],
                     other=0.0)
        if IEEE2:
            acc2 = tl.dot(a2, b2, acc2, input_precision="ieee")
        else:
            acc2 = tl.dot(a2, b2, acc2)
    acc += acc2 * tl.cast(scale, ACC)
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(ACC)[None, :]
    tl.store(C + rm[:, None] * s_cm + rn[None, :] * s_cn, acc.to(C.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _mm_plus_lowrank(a1, b1_kn_strides, b1, a2, b2_kn_strides, b2, scale, bias, out_cols, out_dtype):
    """out[M, N] = a1 @ B1 + scale * a2 @ B2 (+ bias); B1/B2 given as tensors plus (k, n) strides."""
    M, K1 = a1.shape
    K2 = a2.shape[1]
    c = torch.empty((M, out_cols), dtype=out_dtype, device=a1.device)
    if M == 0 or out_cols == 0:
        return c
    if a2.dtype != b2.dtype:
        a2 = a2.to(b2.dtype)
    N = out_cols

    def grid(meta):
        return (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)

    lora_mm[grid](
        a1, b1, a2, b2, bias if bias is not None else c, c, M, N, K1, K2, float(scale),
        a1.stride(0), a1.stride(1), b1_kn_strides[0], b1_kn_strides[1],
        a2.stride(0), a2.stride(1), b2_kn_strides[0], b2_kn_strides[1], c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None, IEEE2=b2.dtype == torch.float32, BK2=max(16, min(next_pow2(K2), 64)),
        ACC=acc_type(a1, b2))
    return c


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


def _base_weight(weight, quant_state, dtype):
    w = dequantize(weight, quant_state)
    return w if w.dtype == dtype else w.to(dtype)


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scaling, bias, quant_state):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = _base_weight(weight, quant_state, x.dtype)
        xa = torch.mm(x2.to(lora_a.dtype), lora_a.t())  # [rows, r]
        out_features = w.shape[0]
        # B1 = W^T viewed [in, out]: k stride = W.stride(1), n stride = W.stride(0); B2 = B^T likewise
        y = _mm_plus_lowrank(x2, (w.stride(1), w.stride(0)), w, xa, (lora_b.stride(1), lora_b.stride(0)), lora_b,
                             scaling, bias.to(x.dtype) if bias is not None else None, out_features, x.dtype)
        ctx.save_for_backward(x2, weight, lora_a, lora_b, xa, bias)
        ctx.scaling, ctx.quant_state, ctx.shape = scaling, quant_state, shape
        return y.view(*shape[:-1], out_features)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, lora_a, lora_b, xa, bias = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1])
        need_dx, need_dw, need_da, need_db, _, need_dbias, _ = ctx.needs_input_grad
        dy_b = dy2 if dy2.dtype == lora_b.dtype else dy2.to(lora_b.dtype)
        dyb = torch.mm(dy_b, lora_b)  # [rows, r]
        dx = dw = da = db = dbias = None
        if need_dx:
            w = _base_weight(weight, ctx.quant_state, x2.dtype)
            # B1 = W viewed [out, in]: k stride = W.stride(0), n stride = W.stride(1); B2 = A [r, in]
            dx = _mm_plus_lowrank(dy2.to(x2.dtype), (w.stride(0), w.stride(1)), w, dyb,
                                  (lora_a.stride(0), lora_a.stride(1)), lora_a, s, None, w.shape[1], x2.dtype)
            dx = dx.view(ctx.shape)
        if need_da:
            da = torch.mm(dyb.t(), x2.to(lora_a.dtype)).mul_(s)
        if need_db:
            db = torch.mm(dy_b.t(), xa.to(lora_b.dtype)).mul_(s)
        if need_dw:  # a trainable base weight (not LoRA's use): plain dW
            dw = torch.mm(dy2.t().to(x2.dtype), x2).to(weight.dtype)
        if need_dbias:
            dbias = dy2.float().sum(0).to(bias.dtype)
        return dx, dw, da, db, None, dbias, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float, bias: torch.Tensor | None = None, quant_state=None) -> torch.Tensor:
    """Triton `x @ W^T + scaling * (x @ A^T) @ B^T (+ bias)`; `quant_state` given: W is bnb 4-bit data."""
    return LoRALinearFunction.apply(x, weight, lora_a, lora_b, float(scaling), bias, quant_state)


def lora_linear_reference(x, weight, lora_a, lora_b, scaling, bias=None, quant_state=None):
    """Plain PyTorch, as PEFT's lora.Linear computes it with dropout 0."""
    w = dequantize(weight, quant_state, reuse=False) if quant_state is not None else weight
    result = torch.nn.functional.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    xa = x.to(lora_a.dtype)
    lora = torch.nn.functional.linear(torch.nn.functional.linear(xa, lora_a), lora_b) * scaling
    return (result + lora).to(result.dtype)
