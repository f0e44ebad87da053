"""Packed SFT batches on attention that reads a mask (SDPA, eager): rows never attend to each other."""

from __future__ import annotations

import torch


class BlockDiagonalPacking:
    """Padding-free packing for SDPA: packed rows never attend to each other.

    TRL's padding-free batches tell rows apart by position_ids / cu_seq_lens, which flash attention
    reads. SDPA and eager read them only where transformers builds the mask itself: with no
    attention_mask and no KV cache (training runs without one, train.py). Otherwise each row would
    attend to the rows packed before it (measured here: logits off by ~5 on a tiny model).
    Full-attention models get an explicit [1, 1, T, T] block-diagonal causal mask (T² bits: 64 MiB
    for 8192 packed tokens). Sliding-window models get no mask: a custom 4-D mask replaces
    transformers' per-layer masks, so the local layers would lose their window (Gemma 3: logits off by
    ~4, tests/data/test_packing.py); transformers then composes the window with the packed rows itself.
    """

    def __init__(self, collator, sliding: bool = False):
        self.collator = collator
        self.sliding = sliding

    def __call__(self, examples):
        batch = self.collator(examples)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
            batch.pop(key, None)
        if self.sliding:
            batch.pop("attention_mask", None)  # position_ids alone: transformers finds the packed rows
            return batch
        positions = batch["position_ids"][0]
        segment = (positions == 0).cumsum(0)
        n = positions.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool, device=positions.device).tril()
        batch["attention_mask"] = (causal & (segment[:, None] == segment[None, :]))[None, None]
        return batch


def has_sliding_window(model) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "sliding_window", None))
