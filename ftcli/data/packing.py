"""Packed SFT batches: several sequences in one row, told apart by position_ids alone (padding-free).

TRL packs rows best-fit-decreasing into bins of max_seq_length and its padding-free collator gives one row
with position_ids restarting at every packed sequence (plus cu_seq_lens for flash attention). This
collator hands the model only the position_ids, never a mask. Two paths then keep every sequence to
itself, and both split the row by the same rule (a new sequence wherever the position does not grow by
one):
- ftcli's patched attention (engine/window_attention.py) runs one variable-length FlashAttention call with
  the sequences' bounds: no mask, no padding (CUDA, bf16/fp16);
- elsewhere transformers builds the block-diagonal causal mask itself from the position_ids (its
  masking_utils.find_packed_sequence_indices; windows included on sliding layers), which it does only
  with no attention_mask and no KV cache: training runs without a cache (engine/checkpointing.apply).
A 4-D mask of our own would replace transformers' per-layer masks (Gemma 3's local layers lost their
window: logits off by ~4, tests/data/test_packing.py) and made TRL count T² "tokens" in num_tokens.
"""

from __future__ import annotations

PACKING_KEYS = ("attention_mask", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


class PaddingFreePacking:
    """Wraps TRL's padding-free collator: the packed row with its position_ids, no mask."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        for key in PACKING_KEYS:
            batch.pop(key, None)
        return batch


def has_sliding_window(model) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "sliding_window", None))


def bin_stats(dataset, max_length: int) -> dict:
    """Sequences, bins and how full the bins are, for a dataset TRL has packed (its `seq_lengths` column)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    per_bin = [len(s) for s in dataset["seq_lengths"]] if "seq_lengths" in dataset.column_names else [1] * len(lengths)
    bins = len(lengths)
    return {"sequences": sum(per_bin), "bins": bins, "tokens": sum(lengths),
            "fill": sum(lengths) / max(1, bins * max_length), "sequences_per_bin": sum(per_bin) / max(1, bins)}
