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

Packed rows (TRL's padding-free batches: one row, position_ids restarting at every packed sequence, no
attention_mask) take the same call with each sequence's bounds as the cumulative lengths: causal
attention inside each sequence (with the window on sliding layers), nothing across them, no mask and no
padding. `row_layout` finds the bounds by transformers' own rule (a new sequence wherever the position
does not grow by one), so the masked fallback and this path split the row identically.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

ROWS_KWARG = "ftcli_plain_rows"  # passed from the decoder model to its layers (and so into their recompute)
CALLS = {"window": 0, "packed": 0}  # how often each varlen path ran (tests check the path was taken)


@dataclass(frozen=True)
class PackedRows:
    """One row of packed sequences: `starts` [n + 1] int32 cumulative bounds, `longest` the longest sequence."""

    starts: torch.Tensor
    longest: int


def row_layout(attention_mask, position_ids, cache, plain_needed: bool = True):
    """PackedRows for a padding-free packed row; True for plain rows (asked only when `plain_needed`, since
    only sliding layers use them); False otherwise."""
    if cache is None and attention_mask is None and position_ids is not None and position_ids.shape[0] == 1:
        packed = packed_rows(position_ids[0])
        if packed is not None:
            return packed
    return plain_needed and plain_rows(attention_mask, position_ids, cache)


def packed_rows(positions: torch.Tensor) -> PackedRows | None:
    """The sequences of one packed row, split where a position does not follow the one before (transformers'
    rule, masking_utils.find_packed_sequence_indices); None for a single sequence."""
    breaks = (torch.diff(positions) != 1).nonzero().flatten() + 1  # one device sync per forward
    if breaks.numel() == 0:
        return None
    starts = torch.cat([breaks.new_tensor([0]), breaks, breaks.new_tensor([positions.numel()])]).to(torch.int32)
    return PackedRows(starts, int((starts[1:] - starts[:-1]).max()))


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


def packed_path_blocker(config, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why packed rows of a model with this config, on this device and dtype, cannot take the varlen call
    (None when they can); `available` checks the same at each call."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    reasons = [(device.type != "cuda", "no CUDA device"),
               (dtype not in (torch.float16, torch.bfloat16), f"weights in {str(dtype).removeprefix('torch.')}"),
               (head_dim > 256 or head_dim % 8, f"head_dim {head_dim}"),
               (bool(getattr(text, "attn_logit_softcapping", None)), "attention soft-capping"),
               (bool(getattr(text, "attention_dropout", 0.0)), "attention dropout")]
    for blocked, reason in reasons:
        if blocked:
            return reason
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "a GPU older than Ampere"
    return None if _varlen() is not None else "this torch has no varlen_attn with a window (torch >= 2.11)"


def attend(q, k, v, *, window: int | None, scale: float, kernel=None, rows: PackedRows | None = None) -> torch.Tensor:
    """Causal attention where token i sees tokens i - window + 1 .. i of its own sequence (all earlier tokens
    of it when `window` is None). Without `rows` each row of the batch is one sequence; with them the batch
    is one row of packed sequences.

    q [B, Hq, T, D], k/v [B, Hkv, T, D] (transformers' layout); returns [B, T, Hq, D] like its
    attention functions do. `kernel`: a stand-in for varlen_attn (tests on CPU)."""
    kernel = kernel or _varlen()
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    # [B, H, T, D] views of [B, T, H, D] projections (RoPE keeps that layout) flatten without a copy
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (q, k, v))
    if rows is None:
        starts, longest = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=q.device), length
    else:
        starts, longest = rows.starts, rows.longest
    extra = {}
    if kv_heads != heads:
        if _takes_gqa(kernel):
            extra["enable_gqa"] = True
        else:  # an older varlen_attn: give k/v the query heads
            k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    out = kernel(q, k, v, starts, starts, longest, longest, scale=scale,
                 window_size=(window - 1, 0) if window else (-1, 0), **extra)
    CALLS["packed" if rows is not None else "window"] += 1
    return out.view(batch, length, heads, dim)


@functools.cache
def _takes_gqa(kernel) -> bool:
    return "enable_gqa" in inspect.signature(kernel).parameters
