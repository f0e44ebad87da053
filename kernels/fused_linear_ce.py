"""Fused lm_head + cross-entropy, and the chunked selected-token log-prob variant (DPO, GRPO, TRL's fused head).

The [tokens, vocab] logits are never materialised. Rows whose label is `ignore_index` are dropped
first (a prompt token costs nothing), the rest go through in chunks of `chunk_rows` tokens: the chunk's
logits come from one torch GEMM (cuBLAS, fp32 accumulation, model dtype out, like the model's own
lm_head), then one Triton program per row streams the vocabulary in tiles:
  pass 1  online max / sum-exp (fp32) -> lse;  target logit z_y;  optional mean logit
  pass 2  p = exp(z - lse); the logit gradient is written *in place* over the chunk's logits;
          optional entropy (lse - sum p z) and log(sum p^2)
and torch GEMMs turn the chunk's logit gradient into the hidden-state gradient (and the lm_head
gradient only when the weight is trainable). All gradients are computed in the forward; the
backward only scales them by the incoming gradient.

Logit transform, in this order (TRL's and transformers' order): x = logit_scale * raw;
Gemma soft-capping z = cap * tanh(x / cap); z /= temperature.  dz/draw = scale * (1 - tanh^2) / T.

Cross-entropy loss = sum over real labels of (lse - z_y), divided by `num_items_in_batch` when given
(the gradient-accumulation fix: the trainer counts the real labels of the whole optimizer step), else by
the local count of real labels (an all-ignored batch gives a differentiable 0, not NaN). The divisor
stays on the device (no host sync for it); selecting the real rows costs one sync (`nonzero`).

`selected_logprobs` returns per-token log p(label) with gradient; the gradient of log p w.r.t. the
hidden row, (onehot - p) * dz/draw @ W, is formed during the forward (one [rows, hidden] tensor), so the
backward is a per-row scale. Entropy has a gradient too: if a caller backpropagates through it (or the
lm_head is trainable), the backward recomputes the chunk logits instead.
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


def _chunk_rows(n_vocab: int, dtype: torch.dtype, chunk_rows: int | None) -> int:
    if chunk_rows:
        return int(chunk_rows)
    env = os.environ.get("FTCLI_CE_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    per_row = n_vocab * torch.empty((), dtype=dtype).element_size()
    rows = max(1, CHUNK_BYTES // per_row)
    return 1 << (rows.bit_length() - 1)  # a power of two: GEMM-friendly


def _chunk_logits(h, weight, bias):
    return torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
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


def _launch_rows(logits, labels, out, lse, *, mode, ignore_index, logit_scale, softcap, temperature,
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


def _divisor(num_items_in_batch, n_valid: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    if num_items_in_batch is None:
        return n_valid.to(device=device, dtype=dtype).clamp(min=1)
    return torch.as_tensor(num_items_in_batch, device=device).to(dtype).reshape(())


# ---------------------------------------------------------------------------------------------
# Cross-entropy


class FusedLinearCEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, num_items_in_batch, ignore_index, softcap, logit_scale,
                chunk_rows, return_is_top1):
        shape = hidden.shape
        h2 = hidden.reshape(-1, shape[-1])
        y = labels.reshape(-1).to(h2.device)
        n_rows, n_vocab = h2.shape[0], weight.shape[0]
        valid = y != ignore_index
        idx = valid.nonzero().squeeze(1)
        acc = acc_dtype(h2.dtype)
        inv = 1.0 / _divisor(num_items_in_batch, valid.sum(), h2.device, acc)
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_db = bias is not None and ctx.needs_input_grad[2]
        mode = MODE_CE_GRAD if (need_dh or need_dw or need_db) else MODE_STATS

        grad_h = torch.zeros_like(h2) if need_dh else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_dw else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_db else None
        loss_rows = torch.zeros(idx.numel(), dtype=acc, device=h2.device)
        top1_rows = torch.zeros(idx.numel(), dtype=torch.int8, device=h2.device) if return_is_top1 else None
        lse = torch.empty(idx.numel(), dtype=acc, device=h2.device)
        step = _chunk_rows(n_vocab, h2.dtype, chunk_rows)
        for start in range(0, idx.numel(), step):
            rows = idx[start:start + step]
            hc = h2.index_select(0, rows)
            logits = _chunk_logits(hc, weight, bias)
            _launch_rows(logits, y.index_select(0, rows), loss_rows[start:start + step], lse[start:start + step],
                         mode=mode, ignore_index=ignore_index, logit_scale=logit_scale, softcap=softcap,
                         temperature=1.0, gscale=inv,
                         top1=top1_rows[start:start + step] if top1_rows is not None else None)
            if need_dh:
                grad_h.index_copy_(0, rows, torch.mm(logits, weight.to(logits.dtype)).to(grad_h.dtype))
            if need_dw:
                _addmm_f32(grad_w, logits.t(), hc)
            if need_db:
                grad_b += logits.to(acc).sum(0)
            del logits
        loss = loss_rows.sum() * inv
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.shape, ctx.w_dtype = shape, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        if return_is_top1:
            top1 = torch.zeros(n_rows, dtype=torch.bool, device=h2.device)
            top1[idx] = top1_rows.bool()
            ctx.mark_non_differentiable(top1)
            return loss, top1.view(labels.shape)
        return loss

    @staticmethod
    def backward(ctx, dloss, *_):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        dh = dw = db = None
        if grad_h is not None:
            dh = (grad_h * dloss.to(grad_h.dtype)).view(ctx.shape)
        if grad_w is not None:
            dw = (grad_w * dloss).to(ctx.w_dtype)
        if grad_b is not None:
            db = (grad_b * dloss).to(ctx.b_dtype)
        return dh, dw, db, None, None, None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                               num_items_in_batch=None, softcap: float | None = None, logit_scale: float = 1.0,
                               chunk_rows: int | None = None, return_is_top1: bool = False):
    """Cross-entropy of `hidden @ weight.T (+ bias)` against `labels` (already aligned: no shift here).

    hidden [..., H], labels [...]. Returns the fp32 loss (sum over real labels / num_items_in_batch, or /
    their count), and with `return_is_top1` also a bool tensor shaped like labels: label is the argmax.
    """
    return FusedLinearCEFunction.apply(hidden, weight, bias, labels, num_items_in_batch, ignore_index, softcap,
                                       logit_scale, chunk_rows, return_is_top1)


def _transform_reference(logits, softcap, logit_scale):
    # model dtype, as transformers' Gemma/Granite heads do it
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def fused_linear_cross_entropy_reference(hidden, weight, labels, bias=None, *, ignore_index=-100,
                                         num_items_in_batch=None, softcap=None, logit_scale=1.0, chunk_rows=None,
                                         return_is_top1=False):
    """Plain PyTorch: full logits, transformers' ForCausalLMLoss reduction (but 0, not NaN, with no labels)."""
    logits = _transform_reference(torch.nn.functional.linear(hidden, weight, bias), softcap, logit_scale).float()
    logits = logits.reshape(-1, logits.shape[-1])
    y = labels.reshape(-1).to(logits.device)
    total = torch.nn.functional.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
    valid = y != ignore_index
    loss = total / _divisor(num_items_in_batch, valid.sum(), logits.device)
    if return_is_top1:
        z_y = logits.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
        top1 = valid & (z_y >= logits.max(-1).values)
        return loss, top1.view(labels.shape)
    return loss


# ---------------------------------------------------------------------------------------------
# Selected-token log-probs

LOGPROB_OUTPUTS = ("log_probs", "entropy", "is_top1", "mean_logits", "log_sum_sq_probs")


class SelectedLogprobFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, temperature, softcap, logit_scale, chunk_rows,
                want):
        h2 = hidden.reshape(-1, hidden.shape[-1])
        y = labels.reshape(-1).to(h2.device)
        n_rows, n_vocab = h2.shape[0], weight.shape[0]
        idx = (y != ignore_index).nonzero().squeeze(1)
        n = idx.numel()
        dev = h2.device
        acc = acc_dtype(h2.dtype)
        logp = torch.zeros(n, dtype=acc, device=dev)
        lse = torch.empty(n, dtype=acc, device=dev)
        # entropy is always computed: the backward needs E_p[z] = lse - entropy if entropy gets a gradient
        ent = torch.zeros(n, dtype=acc, device=dev)
        top1 = torch.zeros(n, dtype=torch.int8, device=dev) if "is_top1" in want else None
        meanz = torch.zeros(n, dtype=acc, device=dev) if "mean_logits" in want else None
        lssp = torch.zeros(n, dtype=acc, device=dev) if "log_sum_sq_probs" in want else None
        # the unit-gradient trick needs a frozen lm_head; a trainable one is handled by recomputation
        fast = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1] and not (
            bias is not None and ctx.needs_input_grad[2])
        g_rows = torch.empty(n, h2.shape[1], dtype=h2.dtype, device=dev) if fast else None
        step = _chunk_rows(n_vocab, h2.dtype, chunk_rows)
        kw = dict(ignore_index=ignore_index, logit_scale=logit_scale, softcap=softcap, temperature=temperature)
        for start in range(0, n, step):
            rows = idx[start:start + step]
            sl = slice(start, start + step)
            logits = _chunk_logits(h2.index_select(0, rows), weight, bias)
            _launch_rows(logits, y.index_select(0, rows), logp[sl], lse[sl], mode=MODE_LOGP_GRAD if fast else
                         MODE_STATS, ent=ent[sl], top1=top1[sl] if top1 is not None else None,
                         meanz=meanz[sl] if meanz is not None else None,
                         lssp=lssp[sl] if lssp is not None else None, **kw)
            if fast:
                g_rows[sl] = torch.mm(logits, weight.to(logits.dtype))  # autocast: logits may differ from h
            del logits
        ctx.save_for_backward(hidden, weight, bias, y, idx, lse, ent, g_rows)
        ctx.kw, ctx.chunk_rows = kw, chunk_rows
        ctx.set_materialize_grads(False)

        def scatter(v, dtype=None):
            full = torch.zeros(n_rows, dtype=dtype or v.dtype, device=dev)
            full[idx] = v if dtype is None else v.to(dtype)
            return full.view(labels.shape)

        outs = [scatter(logp), scatter(ent),
                scatter(top1, torch.bool) if top1 is not None else None,
                scatter(meanz) if meanz is not None else None,
                scatter(lssp) if lssp is not None else None]
        ctx.mark_non_differentiable(*[o for o in outs[2:] if o is not None])
        return tuple(outs)

    @staticmethod
    def backward(ctx, d_logp, d_ent, *_):
        hidden, weight, bias, y, idx, lse, ent, g_rows = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_db = bias is not None and ctx.needs_input_grad[2]
        shape = hidden.shape
        h2 = hidden.reshape(-1, shape[-1])
        n = idx.numel()
        dev = h2.device
        acc = lse.dtype
        dlogp = d_logp.reshape(-1).index_select(0, idx).to(acc) if d_logp is not None else None
        dent = d_ent.reshape(-1).index_select(0, idx).to(acc) if d_ent is not None else None
        dh = dw = db = None
        if g_rows is not None and dent is None and not need_dw and not need_db:
            dh = torch.zeros_like(h2)
            if dlogp is not None:
                dh.index_copy_(0, idx, g_rows * dlogp[:, None].to(g_rows.dtype))
            return dh.view(shape), None, None, None, None, None, None, None, None, None
        # recompute: gradients through log_probs and entropy, and the lm_head's own gradients
        zeros = torch.zeros(n, dtype=acc, device=dev)
        dlogp = zeros if dlogp is None else dlogp
        dent = zeros if dent is None else dent
        if need_dh:
            dh = torch.zeros_like(h2)
        if need_dw:
            dw32 = torch.zeros(weight.shape, dtype=acc, device=dev)
        if need_db:
            db32 = torch.zeros(bias.shape, dtype=acc, device=dev)
        step = _chunk_rows(weight.shape[0], h2.dtype, ctx.chunk_rows)
        scratch = torch.empty(min(step, n), dtype=acc, device=dev)
        for start in range(0, n, step):
            rows = idx[start:start + step]
            sl = slice(start, start + step)
            hc = h2.index_select(0, rows)
            logits = _chunk_logits(hc, weight, bias)
            _launch_rows(logits, y.index_select(0, rows), scratch[: rows.numel()], lse[sl], mode=MODE_RECOMPUTE,
                         ent=ent[sl], dlogp=dlogp[sl], dent=dent[sl], **ctx.kw)
            if need_dh:
                dh.index_copy_(0, rows, torch.mm(logits, weight.to(logits.dtype)).to(dh.dtype))
            if need_dw:
                _addmm_f32(dw32, logits.t(), hc)
            if need_db:
                db32 += logits.to(acc).sum(0)
        if need_dh:
            dh = dh.view(shape)
        if need_dw:
            dw = dw32.to(weight.dtype)
        if need_db:
            db = db32.to(bias.dtype)
        return dh, dw, db, None, None, None, None, None, None, None


def selected_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      bias: torch.Tensor | None = None, *, ignore_index: int = -100, temperature: float = 1.0,
                      softcap: float | None = None, logit_scale: float = 1.0, chunk_rows: int | None = None,
                      outputs: tuple[str, ...] = ("log_probs",)) -> dict[str, torch.Tensor | None]:
    """Per-token log p(label) under softmax(transform(hidden @ weight.T) / temperature), chunked.

    Returns {name: tensor shaped like labels (0 where ignored) or None} for the names in
    LOGPROB_OUTPUTS; `log_probs` and `entropy` carry gradients, the others do not.
    """
    unknown = set(outputs) - set(LOGPROB_OUTPUTS)
    if unknown:
        raise ValueError(f"selected_logprobs: unknown outputs {sorted(unknown)}")
    outs = SelectedLogprobFunction.apply(hidden, weight, bias, labels, ignore_index, temperature, softcap,
                                         logit_scale, chunk_rows, frozenset(outputs))
    return {name: (outs[i] if name in outputs or name == "log_probs" else None)
            for i, name in enumerate(LOGPROB_OUTPUTS)}


def selected_logprobs_reference(hidden, weight, labels, bias=None, *, ignore_index=-100, temperature=1.0,
                                softcap=None, logit_scale=1.0, chunk_rows=None, outputs=("log_probs",)):
    """Plain PyTorch: full logits in fp32, log_softmax, gather."""
    z = _transform_reference(torch.nn.functional.linear(hidden, weight, bias), softcap, logit_scale)
    z = z.to(acc_dtype(z.dtype)) / temperature
    valid = labels != ignore_index
    y = labels.clamp(min=0)
    logp_all = torch.log_softmax(z, dim=-1)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    res = {
        "log_probs": torch.where(valid, logp_all.gather(-1, y[..., None]).squeeze(-1), zero),
        "entropy": torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), zero),
        "is_top1": valid & (z.gather(-1, y[..., None]).squeeze(-1) >= z.max(-1).values),
        "mean_logits": torch.where(valid, z.mean(-1), zero).detach(),
        "log_sum_sq_probs": torch.where(valid, torch.logsumexp(2 * logp_all, dim=-1), zero).detach(),
    }
    return {k: (v if k in outputs or k == "log_probs" else None) for k, v in res.items()}
