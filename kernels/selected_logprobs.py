"""Per-token log p(label) of the lm_head's softmax, chunked (DPO, GRPO, TRL's fused head), and its reference.

Rows whose label is `ignore_index` are dropped first (a prompt token costs nothing); the rest go through
the shared chunked row kernel of logit_rows.py. The gradient of log p w.r.t. the hidden row,
(onehot - p) * dz/draw @ W, is formed during the forward (one [rows, hidden] tensor), so the backward is a
per-row scale. Entropy has a gradient too: if a caller backpropagates through it (or the lm_head is
trainable), the backward recomputes the chunk logits instead.
"""

from __future__ import annotations

import torch

from .logit_rows import (
    MODE_LOGP_GRAD,
    MODE_RECOMPUTE,
    MODE_STATS,
    acc_dtype,
    addmm_f32,
    chunk_logits,
    launch_rows,
    rows_per_chunk,
    transform_reference,
)

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
        step = rows_per_chunk(n_vocab, h2.dtype, chunk_rows)
        kw = dict(ignore_index=ignore_index, logit_scale=logit_scale, softcap=softcap, temperature=temperature)
        for start in range(0, n, step):
            rows = idx[start:start + step]
            sl = slice(start, start + step)
            logits = chunk_logits(h2.index_select(0, rows), weight, bias)
            launch_rows(logits, y.index_select(0, rows), logp[sl], lse[sl], mode=MODE_LOGP_GRAD if fast else
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
        step = rows_per_chunk(weight.shape[0], h2.dtype, ctx.chunk_rows)
        scratch = torch.empty(min(step, n), dtype=acc, device=dev)
        for start in range(0, n, step):
            rows = idx[start:start + step]
            sl = slice(start, start + step)
            hc = h2.index_select(0, rows)
            logits = chunk_logits(hc, weight, bias)
            launch_rows(logits, y.index_select(0, rows), scratch[: rows.numel()], lse[sl], mode=MODE_RECOMPUTE,
                        ent=ent[sl], dlogp=dlogp[sl], dent=dent[sl], **ctx.kw)
            if need_dh:
                dh.index_copy_(0, rows, torch.mm(logits, weight.to(logits.dtype)).to(dh.dtype))
            if need_dw:
                addmm_f32(dw32, logits.t(), hc)
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
    z = transform_reference(torch.nn.functional.linear(hidden, weight, bias), softcap, logit_scale)
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
