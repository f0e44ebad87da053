"""`ftcli bench --e2e`: the chat mixes have the lengths they promise, and the modes run end to end (CPU plumbing)."""

import json
import statistics

import pytest
from transformers import AutoTokenizer

from ftcli.bench import chats, e2e
from ftcli.models.builtin import builtin_path


@pytest.mark.parametrize("mix", ["long", "short"])
def test_mixes_hit_their_median_and_99th_percentile_in_real_tokens(tmp_path, mix):
    tokenizer = AutoTokenizer.from_pretrained(builtin_path("tiny-llama3"))
    path = chats.write(tmp_path / f"{mix}.jsonl", mix, 400, tokenizer)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 400 and all([m["role"] for m in r["messages"]] == ["user", "assistant"] * 2 for r in rows)
    tokens = sorted(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                  add_special_tokens=False)["input_ids"]) for r in rows)
    median, p99 = chats.MIXES[mix]
    assert statistics.median(tokens) == pytest.approx(median, rel=0.15)
    assert tokens[int(0.99 * len(tokens))] == pytest.approx(p99, rel=0.3)
    assert chats.write(path, mix, 400, tokenizer).read_text() == path.read_text()  # written once, then reused


@pytest.mark.slow
def test_e2e_modes_train_the_same_rows_and_count_the_same_real_tokens(tmp_path):
    """ftcli train and plain TRL, one epoch of the same 24 short chats on a tiny Llama shape, each in its own
    process: both finish, count the same real tokens, and log the same loss at every step (the same packed
    bins, the same mean over real tokens): the reference that Unsloth's lower loss on the GPU is judged by."""
    from ftcli.bench import lora_step

    folder = lora_step.checkpoint_dir(tmp_path, "tiny-llama")
    data = e2e.dataset(tmp_path, folder, "short", 24)
    spec = dict(arch="tiny-llama", mix="short", folder=str(folder), data=str(data), rows=24, packing=True,
                settings={"seq": 512})
    ours, trl = (e2e.run_in_subprocess({**spec, "mode": m}, timeout=900) for m in ("ftcli", "trl"))
    assert ours.ok and trl.ok, (ours.error, trl.error)
    assert ours.real_tokens == trl.real_tokens > 0
    assert any(n.startswith("packing: on") for n in ours.notes)
    assert len(ours.losses) == len(trl.losses) == ours.steps > 1
    assert ours.losses == pytest.approx(trl.losses, rel=1e-4)
    assert ours.first_loss == pytest.approx(ours.losses[0], abs=1e-5) and ours.final_loss == pytest.approx(trl.final_loss, rel=1e-4)
    assert "x unsloth" not in e2e.line(ours, None) and "failed" in e2e.line(
        e2e.E2EResult("tiny-llama", "unsloth", "short", ok=False, error="boom"), None)
