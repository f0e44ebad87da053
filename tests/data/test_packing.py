"""Packing is exact: packed rows never attend to each other, so each packed sequence gets its own logits, and
the packed run's loss, gradients and token counts are those of the unpacked rows."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftcli.data.packing import PaddingFreePacking, bin_stats, has_sliding_window
from ftcli.models import builtin


def fake_padding_free_collator(rows):
    """The shape of TRL's padding-free batch: one row, positions restarting per packed sequence."""
    ids = torch.cat([torch.tensor(r) for r in rows])[None]
    pos = torch.cat([torch.arange(len(r)) for r in rows])[None]
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": pos, "attention_mask": torch.ones_like(ids),
            "cu_seq_lens_q": torch.tensor([0]), "max_length_q": 1}


def block_diagonal(collator):
    """The old collator: one [1, 1, T, T] block-diagonal causal mask (it replaced the per-layer masks)."""
    def collate(rows):
        batch = collator(rows)
        positions = batch["position_ids"][0]
        segment = (positions == 0).cumsum(0)
        n = positions.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        batch["attention_mask"] = (causal & (segment[:, None] == segment[None, :]))[None, None]
        return batch
    return collate


def packed_logits(model, batch):
    keys = ("input_ids", "position_ids", "attention_mask")
    with torch.no_grad():  # training runs without a KV cache
        return model(**{k: batch[k] for k in keys if k in batch}, use_cache=False).logits[0]


@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_each_sequence_its_own_logits(name, attn):
    """Position ids alone (no mask): transformers splits the row by them, with the local window on Gemma 3's
    sliding layers (rows longer than the window)."""
    model = AutoModelForCausalLM.from_pretrained(builtin.builtin_path(name), attn_implementation=attn,
                                                 dtype=torch.float32).eval()
    window = getattr(model.config, "sliding_window", None) or 16
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (2 * window, window + 9, 9)]
    batch = PaddingFreePacking(fake_padding_free_collator)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    packed = packed_logits(model, batch)
    start = 0
    for row in rows:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row]), use_cache=False).logits[0]
        torch.testing.assert_close(packed[start:start + len(row)], alone, atol=1e-4, rtol=1e-4)
        start += len(row)
    # Negative control: with an all-ones 2-D mask the packed rows are one sequence and see each other.
    leaky = packed_logits(model, {**batch, "attention_mask": torch.ones_like(batch["input_ids"])})
    assert (leaky[2 * window:] - packed[2 * window:]).abs().max() > 1e-2


def test_an_own_4d_mask_would_drop_gemmas_sliding_window():
    """Why the collator hands over no mask: a 4-D mask replaces transformers' per-layer masks."""
    model = AutoModelForCausalLM.from_pretrained(builtin.builtin_path("tiny-gemma3"), attn_implementation="sdpa",
                                                 dtype=torch.float32).eval()
    window = model.config.sliding_window
    assert has_sliding_window(model) and not has_sliding_window(
        AutoModelForCausalLM.from_pretrained(builtin.builtin_path("tiny-llama3")))
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (2 * window, window + 9)]
    ours = packed_logits(model, PaddingFreePacking(fake_padding_free_collator)(rows))
    lost = packed_logits(model, block_diagonal(fake_padding_free_collator)(rows))
    assert (lost[:2 * window] - ours[:2 * window]).abs().max() > 1e-2


def test_bin_stats_reads_the_packed_dataset():
    import datasets

    packed = datasets.Dataset.from_list([{"input_ids": [1] * 10, "seq_lengths": [6, 4]},
                                         {"input_ids": [1] * 7, "seq_lengths": [7]}])
    s = bin_stats(packed, 10)
    assert s == {"sequences": 3, "bins": 2, "tokens": 17, "fill": 0.85, "sequences_per_bin": 1.5}


def test_packed_training_counts_the_real_tokens(tmp_path):
    """train.packing: true on the CPU (transformers' mask path): one epoch's num_tokens is the dataset's real
    token count, and bins of the best-fit-decreasing packer are at least 90% full on the quickstart data."""
    from ftcli import recipe
    from ftcli.runner import train as training
    from helpers.runs import write_recipe

    path = write_recipe(tmp_path / "r.yaml", train={"packing": True, "max_steps": -1, "num_train_epochs": 1,
                                                    "per_device_train_batch_size": 2},
                        model={"name": "builtin:tiny-llama3", "max_seq_length": 256})
    messages = []
    result = training.run(recipe.load(path), log=messages.append)
    packing_line = next(m for m in messages if m.startswith("packing: on"))
    assert "block-diagonal mask" in packing_line  # the CPU has no varlen FlashAttention: said so
    logged = [m["num_tokens"] for m in result.metrics if "num_tokens" in m]
    real = sum(len(ids) for ids in _train_ids(result, path))
    assert logged and logged[-1] == real
    fill = float(packing_line.split("(")[1].split("%")[0]) / 100
    assert fill >= 0.9, packing_line
    manifest = (result.run_dir / "recipe.resolved.yaml").read_text()
    assert "packing: true" in manifest


def _train_ids(result, path):
    """The tokenized train rows of the run (rebuilt the way the runner builds them)."""
    from ftcli import recipe
    from ftcli.data import formats, supervised, templates
    from ftcli.models.pretrained import load_tokenizer

    loaded = recipe.load(path)
    tokenizer = load_tokenizer(loaded.model)
    template = templates.resolve(loaded.template.name, tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    train_rows, _ = formats.split_eval(rows, loaded.dataset.eval_fraction, loaded.train.seed)
    built = supervised.build_sft(train_rows, template, tokenizer, loaded.template.train_on,
                                 loaded.model.max_seq_length, report)
    return built["input_ids"]
