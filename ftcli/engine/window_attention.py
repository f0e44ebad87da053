"""Sliding-window attention without a mask: the band as FlashAttention's window.

transformers hands a sliding-window layer (Gemma 3's local layers, Mistral, Qwen with
use_sliding_window) a [B, 1, T, T] boolean mask once T exceeds the window. SDPA then cannot take
its causal fast path: on an H200 at Gemma-3-4B's shape (B=4, T=2048, window 1024) the masked call
costs 2.5 ms forward+backward against 0.75 ms for plain causal attention, and 16k tokens with a
4k window cost 50 ms against 14 (docs/runs/2026-12-02-sliding/). PyTorch's variable-length
FlashAttention takes the window itself, `window_size=(W - 1, 0)`, and skips the blocks outside it.

That is exact only where the mask says nothing beyond the window: every row one sequence that starts
at position 0, padded (if at all) on the right. Causal attention never lets a real token see the
padding after it, so real tokens get the same result and the loss the same gradients; only the
outputs at padded positions differ, and nothing reads them. `plain_rows` decides that once per
forward from the model's own inputs; everything else (left padding, packed rows, a KV cache, custom
4-D masks, soft-capping, dropout) keeps transformers' masked path.
"""

from __future__ import annotations

import functools
import inspect

import torch

ROWS_KWARG = "ftcli_plain_rows"  # passed from the decoder model to its layers (and so into their recompute)
CALLS = {"window": 0}            # how often the windowed kernel ran (tests check the path was taken)


def plain_rows(attention_mask, position_ids, cache) -> bool:
    """True when each row of the batch is one sequence from position 0 with any padding on the right."""
    if cache is not None:  # generation: the cache's keys come before this call's
        return False
    checks = []
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            return False  # per-layer mask dicts, custom 4-D masks (packing, vision tokens)
        keep = attention_mask.bool()
        checks += [keep[:, 0].all(), (keep[:, 1:] <= keep[:, :-1]).all()]  # starts real, pads only at the end
    if position_ids is not None:
        arange = torch.arange(position_ids.shape[-1], device=position_ids.device)
        checks.append((position_ids == arange).all())
    return bool(torch.stack(checks).all()) if checks else True  # one sync for all checks


@functools.cache  # asked by every sliding layer's call: look it up once
def _varlen():
    """PyTorch's variable-length FlashAttention where it takes a window (torch >= 2.11), else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "window_size" in inspect.signature(varlen_attn).parameters else None


def available(q: torch.Tensor, module) -> bool:
    """Whether `module`'s attention on `q` can run here as a windowed FlashAttention call."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] > 256 or q.shape[-1] % 8:
        return False
    if getattr(module, "attn_logit_softcapping", None) or getattr(module.config, "attn_logit_softcapping", None):
        return False
    if module.training and getattr(module, "attention_dropout", 0.0):
        return False
    return torch.cuda.get_device_capability(q.device)[0] >= 8 and _varlen() is not None


def attend(q, k, v, *, window: int, scale: float, kernel=None) -> torch.Tensor:
    """Causal attention where token i sees tokens i - window + 1 .. i of its own row.

    q [B, Hq, T, D], k/v [B, Hkv, T, D] (transformers' layout); returns [B, T, Hq, D] like its
    attention functions do. `kernel`: a stand-in for varlen_attn (tests on CPU)."""
    kernel = kernel or _varlen()
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    # [B, H, T, D] views of [B, T, H, D] projections (RoPE keeps that layout) flatten without a copy
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (q, k, v))
    starts = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=q.device)
    extra = {}
    if kv_heads != heads:
        if _takes_gqa(kernel):
            extra["enable_gqa"] = True
        else:  # an older varlen_attn: give k/v the query heads
            k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    out = kernel(q, k, v, starts, starts, length, length, scale=scale, window_size=(window - 1, 0), **extra)
    CALLS["window"] += 1
    return out.view(batch, length, heads, dim)


@functools.cache
def _takes_gqa(kernel) -> bool:
    return "enable_gqa" in inspect.signature(kernel).parameters
