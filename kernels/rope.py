"""Rotary position embedding on q and k together (Hugging Face `rotate_half` convention).

For each head vector, the first R = cos.shape[-1] dims are rotated and the rest pass through
(Phi-3's partial rotary). With halves (x1, x2) of the rotated part and (c1, c2), (s1, s2) the
halves of cos and sin:  y1 = x1*c1 - x2*s1,  y2 = x2*c2 + x1*s2  (HF: x*cos + rotate_half(x)*sin).
Backward is the transposed map: dx1 = dy1*c1 + dy2*s2,  dx2 = dy2*c2 - dy1*s1.

Positions: either cos/sin already gathered per token, shaped [B or 1, T, R] (what a transformers
rotary embedding returns), or tables [P, R] plus `position_ids` [B or 1, T] that pick each token's
row (packed / padding-free batches restart at 0 per document). Math in fp32, one rounding on store.
Nothing but cos, sin (and position_ids) is saved for backward. q: [B, Hq, T, D], k: [B, Hk, T, D],
any strides with a contiguous last dim (HF's `view(...).transpose(1, 2)` layout needs no copy).
"""

from __future__ import annotations

import torch

from ._triton import acc_type, kernel, next_pow2

try:
    import triton.language as tl
except ImportError:
    tl = None


@kernel
def rope_qk(Q, K, QO, KO, COS, SIN, POS,
            sq_b, sq_h, sq_t, sk_b, sk_h, sk_t,
            sqo_b, sqo_h, sqo_t, sko_b, sko_h, sko_t,
            sc_b, sc_t, sp_b, sp_t,
            T, HQ, HK, HALF, NPASS,
            HAS_POS: tl.constexpr, BACKWARD: tl.constexpr, HAS_PASS: tl.constexpr,
            BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
            ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    if HAS_POS:
        row = tl.load(POS + b * sp_b + t * sp_t).to(tl.int64)
        cs_off = row * sc_t
    else:
        cs_off = b * sc_b + t * sc_t
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < HALF
    c1 = tl.load(COS + cs_off + d, mask=dmask, other=0.0).to(ACC)
    c2 = tl.load(COS + cs_off + HALF + d, mask=dmask, other=0.0).to(ACC)
    s1 = tl.load(SIN + cs_off + d, mask=dmask, other=0.0).to(ACC)
    s2 = tl.load(SIN + cs_off + HALF + d, mask=dmask, other=0.0).to(ACC)
    if BACKWARD:
        # transpose of [[c1, -s1], [s2, c2]] is [[c1, s2], [-s1, c2]]
        a11, a12, a21, a22 = c1, s2, -s1, c2
    else:
        a11, a12, a21, a22 = c1, -s1, s2, c2

    # q heads
    h = tl.arange(0, BLOCK_HQ)
    m = (h[:, None] < HQ) & dmask[None, :]
    src = Q + b * sq_b + t * sq_t + h[:, None] * sq_h + d[None, :]
    dst = QO + b * sqo_b + t * sqo_t + h[:, None] * sqo_h + d[None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(ACC)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(ACC)
    tl.store(dst, (x1 * a11[None, :] + x2 * a12[None, :]).to(QO.dtype.element_ty), mask=m)
    tl.store(dst + HALF, (x1 * a21[None, :] + x2 * a22[None, :]).to(QO.dtype.element_ty), mask=m)
    if HAS_PASS:
        p = tl.arange(0, BLOCK_PASS)
        pm = (h[:, None] < HQ) & (p[None, :] < NPASS)
        v = tl.load(Q + b * sq_b + t * sq_t + h[:, None] * sq_h + 2 * HALF + p[None, :], mask=pm, other=0.0)
        tl.store(QO + b * sqo_b + t * sqo_t + h[:, None] * sqo_h + 2 * HALF + p[None, :], v, mask=pm)

    # k heads
    h = tl.arange(0, BLOCK_HK)
    m = (h[:, None] < HK) & dmask[None, :]
    src = K + b * sk_b + t * sk_t + h[:, None] * sk_h + d[None, :]
    dst = KO + b * sko_b + t * sko_t + h[:, None] * sko_h + d[None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(ACC)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(ACC)
    tl.store(dst, (x1 * a11[None, :] + x2 * a12[None, :]).to(KO.dtype.element_ty), mask=m)
    tl.store(dst + HALF, (x1 * a21[None, :] + x2 * a22[None, :]).to(KO.dtype.element_ty), mask=m)
    if HAS_PASS:
        p = tl.arange(0, BLOCK_PASS)
        pm = (h[:, None] < HK) & (p[None, :] < NPASS)
        v = tl.load(K + b * sk_b + t * sk_t + h[:, None] * sk_h + 2 * HALF + p[None, :], mask=pm, other=0.0)
        tl.store(KO + b * sko_b + t * sko_t + h[:, None] * sko_h + 2 * HALF + p[None, :], v, mask=pm)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q, k, cos, sin, position_ids, backward):
    B, HQ, T, D = q.shape
    HK = k.shape[1]
    R = cos.shape[-1]
    if R % 2 or R > D:
        raise ValueError(f"rope: rotary dim {R} must be even and <= head dim {D}")
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    cos, sin = cos.contiguous(), sin.contiguous()
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    if position_ids is not None:
        pos = position_ids.reshape(-1, position_ids.shape[-1])
        sp_b = pos.stride(0) if pos.shape[0] > 1 else 0
        sp_t = pos.stride(1)
        sc_b, sc_t = 0, cos.stride(0)
    else:
        cos3 = cos.reshape(-1, cos.shape[-2], R)
        pos, sp_b, sp_t = cos, 0, 0
        sc_b = cos3.stride(0) if cos3.shape[0] > 1 else 0
        sc_t = cos3.stride(1)
    npass = D - R
    if B * T:
        rope_qk[(B * T,)](
            q, k, qo, ko, cos, sin, pos,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
            sc_b, sc_t, sp_b, sp_t,
            T, HQ, HK, R // 2, npass,
            HAS_POS=position_ids is not None, BACKWARD=backward, HAS_PASS=npass > 0,
            BLOCK_HQ=next_pow2(HQ), BLOCK_HK=next_pow2(HK), BLOCK_HALF=next_pow2(R // 2),
            BLOCK_PASS=next_pow2(max(npass, 1)), ACC=acc_type(q, cos), num_warps=4)
    return qo, ko


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids):
        qo, ko = _launch(q, k, cos, sin, position_ids, backward=False)
        ctx.save_for_backward(cos, sin, position_ids)
        return qo, ko

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin, position_ids = ctx.saved_tensors
        dq_in, dk_in = _launch(dq, dk, cos, sin, position_ids, backward=True)
        return dq_in, dk_in, None, None, None


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton RoPE on q [B, Hq, T, D] and k [B, Hk, T, D] in one launch; returns new (q, k)."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("rope expects q and k shaped [batch, heads, seq, head_dim]")
    return RoPEFunction.apply(q, k, cos, sin, position_ids)


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch, as transformers' apply_rotary_pos_emb (with Phi-3's partial-rotary pass-through)."""
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    out = []
    for x in (q, k):
        x_rot, x_pass = x[..., :r], x[..., r:]
        out.append(torch.cat([(x_rot * cos) + (_rotate_half(x_rot) * sin), x_pass], dim=-1))
    return out[0], out[1]
