"""Fused lm_head + cross-entropy (chunked; the [tokens, vocab] logits are never materialised), and its reference.

Rows whose label is `ignore_index` are dropped first (a prompt token costs nothing), the rest go through
the shared chunked row kernel of logit_rows.py in chunks of `chunk_rows` tokens. All gradients are computed
in the forward; the backward only scales them by the incoming gradient.

Cross-entropy loss = sum over real labels of (lse - z_y), divided by `num_items_in_batch` when given
(the gradient-accumulation fix: the trainer counts the real labels of the whole optimizer step), else by
the local count of real labels (an all-ignored batch gives a differentiable 0, not NaN). The divisor
stays on the device (no host sync for it); selecting the real rows costs one sync (`nonzero`).

The selected-token log-prob op lives in selected_logprobs.py; its names are importable from here too.
"""

from __future__ import annotations

import torch

from .logit_rows import (  # noqa: F401 - CHUNK_BYTES re-exported: the old home of the name
    CHUNK_BYTES,
    MODE_CE_GRAD,
    MODE_STATS,
    acc_dtype,
    addmm_f32,
    chunk_logits,
    launch_rows,
    rows_per_chunk,
    transform_reference,
)
from .selected_logprobs import (  # noqa: F401 - re-exported: the old import path of the log-prob op
    LOGPROB_OUTPUTS,
    SelectedLogprobFunction,
    selected_logprobs,
    selected_logprobs_reference,
)


def _divisor(num_items_in_batch, n_valid: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    if num_items_in_batch is None:
        return n_valid.to(device=device, dtype=dtype).clamp(min=1)
    return torch.as_tensor(num_items_in_batch, device=device).to(dtype).reshape(())


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
        step = rows_per_chunk(n_vocab, h2.dtype, chunk_rows)
        for start in range(0, idx.numel(), step):
            rows = idx[start:start + step]
            hc = h2.index_select(0, rows)
            logits = chunk_logits(hc, weight, bias)
            launch_rows(logits, y.index_select(0, rows), loss_rows[start:start + step], lse[start:start + step],
                        mode=mode, ignore_index=ignore_index, logit_scale=logit_scale, softcap=softcap,
                        temperature=1.0, gscale=inv,
                        top1=top1_rows[start:start + step] if top1_rows is not None else None)
            if need_dh:
                grad_h.index_copy_(0, rows, torch.mm(logits, weight.to(logits.dtype)).to(grad_h.dtype))
            if need_dw:
                addmm_f32(grad_w, logits.t(), hc)
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


def fused_linear_cross_entropy_reference(hidden, weight, labels, bias=None, *, ignore_index=-100,
                                         num_items_in_batch=None, softcap=None, logit_scale=1.0, chunk_rows=None,
                                         return_is_top1=False):
    """Plain PyTorch: full logits, transformers' ForCausalLMLoss reduction (but 0, not NaN, with no labels)."""
    logits = transform_reference(torch.nn.functional.linear(hidden, weight, bias), softcap, logit_scale).float()
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
