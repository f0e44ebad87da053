"""Shared Triton row kernel and chunking helpers for the ops over lm_head logits (fused_linear_ce, selected_logprobs).

The [tokens, vocab] logits are never materialised: an op takes the rows it needs in chunks of `chunk_rows`
tokens; the chunk's logits come from one torch GEMM (cuBLAS, fp32 accumulation, model dtype out, like the
model's own lm_head), then one Triton program per row (`ce_rows`) streams the vocabulary in tiles:
  pass 1  online max / sum-exp (fp32) -> lse;  target logit z_y;  optional mean logit
  pass 2  p = exp(z - lse); the logit gradient is written *in place* over the chunk's logits;
          optional entropy (lse - sum p z) and log(sum p^2)
and torch GEMMs turn a chunk's logit gradient into the hidden-state gradient (and the lm_head gradient
only when the weight is trainable).

Logit transform, in this order (TRL's and transformers' order): x = logit_scale * raw;
Gemma soft-capping z = cap * tanh(x / cap); z /= temperature.  dz/draw = scale * (1 - tanh^2) / T.
"""

from __future__ import annotations

import os

import torch

from ._triton import interpreting, kernel, next_pow2

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

#: Widest vocabulary tile per program iteration (tests lower it to exercise masked last tiles).
BLOCK_V_MAX = 4096
#: Rows per program under the CPU interpreter (tests); 1 on the GPU.
ROWS_MAX = 32
#: Default memory budget for one chunk of logits (model dtype); 256 MiB = 1024 rows at V = 128256 bf16
#: (a 1024-row lm_head GEMM still runs at full speed; 512 MiB chunks cost 0.25 GiB more peak memory).
CHUNK_BYTES = 256 * 2**20

MODE_STATS, MODE_CE_GRAD, MODE_LOGP_GRAD, MODE_RECOMPUTE = 0, 1, 2, 3


# One Triton kernel: splitting it costs a launch per part (every mode shares the two vocabulary passes).
@kernel
def ce_rows(LOGITS, stride_l, LABELS, OUT, LSE, ENT, TOP1, MEANZ, LSSP, GSCALE, DLOGP, DENT,
            n_rows, n_cols, logit_scale, softcap, inv_temp, ignore_index,
            MODE: tl.constexpr, HAS_SOFTCAP: tl.constexpr, WANT_ENT: tl.constexpr, WANT_TOP1: tl.constexpr,
            WANT_MEANZ: tl.constexpr, WANT_LSSP: tl.constexpr, BLOCK_V: tl.constexpr, ROWS: tl.constexpr,
            ACC: tl.constexpr):
    """ROWS rows per program (1 for big vocabularies), BLOCK_V-wide vocabulary tiles."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    rows = rows.to(tl.int64)
    base = LOGITS + rows * stride_l
    scale = tl.cast(logit_scale, ACC)
    cap = tl.cast(softcap, ACC)
    inv_t = tl.cast(inv_temp, ACC)
    label = tl.load(LABELS + rows, mask=rmask, other=ignore_index).to(tl.int64)
    valid = (label != ignore_index) & rmask
    label = tl.where(valid, label, 0)
    cols0 = tl.arange(0, BLOCK_V)

    # target logit
    x_y = tl.load(base + label, mask=rmask, other=0.0).to(ACC) * scale
    if HAS_SOFTCAP:
        x_y = cap * (2.0 * tl.sigmoid(2.0 * x_y / cap) - 1.0)
    z_y = x_y * inv_t

    if MODE == 3:
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        ez = lse - tl.load(ENT + rows, mask=rmask, other=0.0)  # E_p[z] = lse - entropy
        dlogp = tl.load(DLOGP + rows, mask=rmask, other=0.0)
        dent = tl.load(DENT + rows, mask=rmask, other=0.0)
    else:
        m = tl.full([ROWS], -float("inf"), ACC)
        s = tl.zeros([ROWS], ACC)
        sum_z = tl.zeros([ROWS], ACC)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + cols0
            col_ok = cols < n_cols
            msk = rmask[:, None] & col_ok[None, :]
            x = tl.load(base[:, None] + cols[None, :], mask=msk, other=0.0).to(ACC) * scale
            if HAS_SOFTCAP:
                x = cap * (2.0 * tl.sigmoid(2.0 * x / cap) - 1.0)
            z = tl.where(col_ok[None, :], x * inv_t, -float("inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
            m = m_new
            if WANT_MEANZ:
                sum_z += tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)
        lse = m + tl.log(s)
        if MODE == 1:
            tl.store(OUT + rows, tl.where(valid, lse - z_y, 0.0), mask=rmask)
        else:
            tl.store(OUT + rows, tl.where(valid, z_y - lse, 0.0), mask=rmask)
        tl.store(LSE + rows, lse, mask=rmask)
        if WANT_TOP1:
            tl.store(TOP1 + rows, (valid & (z_y >= m)).to(tl.int8), mask=rmask)
        if WANT_MEANZ:
            tl.store(MEANZ + rows, tl.where(valid, sum_z / n_cols, 0.0), mask=rmask)

    if (MODE != 0) | WANT_ENT | WANT_LSSP:
        if MODE == 1:
            gscale = tl.load(GSCALE).to(ACC)
        sum_pz = tl.zeros([ROWS], ACC)
        sum_p2 = tl.zeros([ROWS], ACC)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + cols0
            col_ok = cols < n_cols
            msk = rmask[:, None] & col_ok[None, :]
            ptrs = base[:, None] + cols[None, :]
            x = tl.load(ptrs, mask=msk, other=0.0).to(ACC) * scale
            if HAS_SOFTCAP:
                t = 2.0 * tl.sigmoid(2.0 * x / cap) - 1.0
                x = cap * t
                chain = scale * (1.0 - t * t) * inv_t
            else:
                chain = scale * inv_t
            z = x * inv_t
            p = tl.where(col_ok[None, :], tl.exp(z - lse[:, None]), 0.0)
            if WANT_ENT:
                sum_pz += tl.sum(p * tl.where(col_ok[None, :], z, 0.0), axis=1)
            if WANT_LSSP:
                sum_p2 += tl.sum(p * p, axis=1)
            if MODE != 0:
                onehot = tl.where(cols[None, :] == label[:, None], 1.0, 0.0)
                if MODE == 1:
                    g = (p - onehot) * chain * gscale
                elif MODE == 2:
                    g = (onehot - p) * chain
                else:
                    g = (dlogp[:, None] * (onehot - p) + dent[:, None] * p * (ez[:, None] - z)) * chain
                g = tl.where(valid[:, None], g, 0.0)
                tl.store(ptrs, g.to(LOGITS.dtype.element_ty), mask=msk)
        if WANT_ENT:
            tl.store(ENT + rows, tl.where(valid, lse - sum_pz, 0.0), mask=rmask)
        if WANT_LSSP:
            tl.store(LSSP + rows, tl.where(valid, tl.log(sum_p2), 0.0), mask=rmask)


def rows_per_chunk(n_vocab: int, dtype: torch.dtype, chunk_rows: int | None) -> int:
    if chunk_rows:
        return int(chunk_rows)
    env = os.environ.get("FTCLI_CE_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    per_row = n_vocab * torch.empty((), dtype=dtype).element_size()
    rows = max(1, CHUNK_BYTES // per_row)
    return 1 << (rows.bit_length() - 1)  # a power of two: GEMM-friendly


def chunk_logits(h, weight, bias):
    return torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())


def addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b without rounding the product to a's dtype first."""
    if acc.device.type == "cuda" and a.dtype in (torch.bfloat16, torch.float16):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):
            pass
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-row statistics in fp32 (fp64 for fp64 models: the exact-GA tests run in float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def launch_rows(logits, labels, out, lse, *, mode, ignore_index, logit_scale, softcap, temperature,
                ent=None, top1=None, meanz=None, lssp=None, gscale=None, dlogp=None, dent=None):
    n_rows, n_cols = logits.shape
    if not n_rows:
        return
    block = min(next_pow2(n_cols), BLOCK_V_MAX)
    # One row per program on the GPU; several under the CPU interpreter, whose cost is per program
    # and per op rather than per element.
    rows = max(1, min(ROWS_MAX, 65536 // block)) if interpreting() else 1
    dummy = lse
    ce_rows[(triton.cdiv(n_rows, rows),)](
        logits, logits.stride(0), labels, out, lse,
        ent if ent is not None else dummy, top1 if top1 is not None else dummy,
        meanz if meanz is not None else dummy, lssp if lssp is not None else dummy,
        gscale if gscale is not None else dummy, dlogp if dlogp is not None else dummy,
        dent if dent is not None else dummy,
        n_rows, n_cols, float(logit_scale), float(softcap or 1.0), 1.0 / float(temperature), int(ignore_index),
        MODE=mode, HAS_SOFTCAP=bool(softcap), WANT_ENT=ent is not None and mode != MODE_RECOMPUTE,
        WANT_TOP1=top1 is not None, WANT_MEANZ=meanz is not None, WANT_LSSP=lssp is not None,
        BLOCK_V=block, ROWS=rows, ACC=tl.float64 if logits.dtype == torch.float64 else tl.float32,
        num_warps=8 if block >= 2048 else 4)


def transform_reference(logits, softcap, logit_scale):
    # model dtype, as transformers' Gemma/Granite heads do it
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
