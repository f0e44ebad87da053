"""Packing is exact: packed rows never attend to each other, so the loss equals the unpacked loss."""

import torch
from transformers import AutoModelForCausalLM

from ftcli.models import builtin
from ftcli.data.packing import BlockDiagonalPacking


def fake_padding_free_collator(rows):
    """The shape of TRL's padding-free batch: one row, positions restarting per packed sequence."""
    ids = torch.cat([torch.tensor(r) for r in rows])[None]
    pos = torch.cat([torch.arange(len(r)) for r in rows])[None]
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": pos,
            "cu_seq_lens_q": torch.tensor([0]), "max_length_q": 1}


def test_block_diagonal_mask_makes_packed_logits_equal_separate_ones():
    model = AutoModelForCausalLM.from_pretrained(builtin.builtin_path("tiny-llama3"), attn_implementation="sdpa",
                                                 dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (17, 30, 9)]
    batch = BlockDiagonalPacking(fake_padding_free_collator)(rows)
    assert "cu_seq_lens_q" not in batch and batch["attention_mask"].shape == (1, 1, 56, 56)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits[0]
        start = 0
        for row in rows:
            alone = model(input_ids=torch.tensor([row])).logits[0]
            torch.testing.assert_close(packed[start:start + len(row)], alone, atol=1e-4, rtol=1e-4)
            start += len(row)
        # Without the mask (position_ids only) the later rows see the earlier ones: the bug this fixes.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        assert (leaky[17:47] - model(input_ids=torch.tensor([rows[1]])).logits[0]).abs().max() > 1e-2


def test_sliding_window_models_keep_their_window_when_packed():
    """Gemma 3's local layers: rows longer than the window, packed, give each row's own logits."""
    from ftcli.data.packing import has_sliding_window

    model = AutoModelForCausalLM.from_pretrained(builtin.builtin_path("tiny-gemma3"), attn_implementation="sdpa",
                                                 dtype=torch.float32).eval()
    window = model.config.sliding_window
    assert has_sliding_window(model) and not has_sliding_window(
        AutoModelForCausalLM.from_pretrained(builtin.builtin_path("tiny-llama3")))
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (2 * window, window + 9, 9)]
    batch = BlockDiagonalPacking(fake_padding_free_collator, sliding=True)(rows)
    assert "attention_mask" not in batch and "cu_seq_lens_q" not in batch
    with torch.no_grad():
        def logits(packing):  # training runs without a KV cache
            b = packing(fake_padding_free_collator)(rows)
            return model(**{k: b[k] for k in ("input_ids", "position_ids", "attention_mask") if k in b},
                         use_cache=False).logits[0]

        packed = logits(lambda c: BlockDiagonalPacking(c, sliding=True))
        start = 0
        for row in rows:
            alone = model(input_ids=torch.tensor([row]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:start + len(row)], alone, atol=1e-4, rtol=1e-4)
            start += len(row)
        # The full-attention mask would replace transformers' per-layer masks: the window is lost.
        lost = logits(BlockDiagonalPacking)
        assert (lost[:2 * window] - packed[:2 * window]).abs().max() > 1e-2


def test_packed_training_runs_with_the_mask(tmp_path):
    from ftcli import recipe
    from ftcli.runner import train as training
    from helpers.runs import write_recipe

    path = write_recipe(tmp_path / "r.yaml", train={"packing": True, "max_steps": 2})
    result = training.run(recipe.load(path))
    assert len([m for m in result.metrics if "loss" in m]) == 2
