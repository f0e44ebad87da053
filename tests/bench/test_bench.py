"""`ftcli bench` bookkeeping that does not need a GPU: FLOPs, shapes, the loss/grad check."""

import gzip
import json

import pytest

from ftcli.bench import lora_step
from ftcli.engine import memory


def test_llama_8b_lora_flops_per_token_match_the_research_table():
    config = lora_step.make_config("llama3-8b")
    # research/kernels.md §1.2's table: 31.6 / 36.5 GFLOP/token at T=2048 / 8192 (its figures leave out
    # the adapters' 6·N_lora = 0.25 GFLOP, which the formula adds).
    assert memory.flops_per_token(config, 2048, 0) / 1e9 == pytest.approx(31.6, abs=0.1)
    assert memory.flops_per_token(config, 8192, 0) / 1e9 == pytest.approx(36.5, abs=0.1)
    lora = memory.flops_per_token(config, 2048, 41_943_040) - memory.flops_per_token(config, 2048, 0)
    assert lora / 1e9 == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("arch", sorted(a for a in lora_step.SHAPES if not a.startswith("tiny")))
def test_every_shape_builds_a_config(arch):
    config = lora_step.make_config(arch)
    assert config.num_hidden_layers > 10 and config.vocab_size > 100_000
    if arch == "gemma3-4b":
        assert len(config.layer_types) == config.num_hidden_layers


def result(mode, loss, grad, ok=True):
    return lora_step.ModeResult(arch="x", mode=mode, ok=ok, first_loss=loss, first_grad_norm=grad)


def test_compare_flags_loss_and_grad_norm_differences():
    assert lora_step.compare([result("hf", 12.0, 1.0), result("ftcli", 12.05, 1.04)]) == []
    problems = lora_step.compare([result("hf", 12.0, 1.0), result("ftcli", 12.2, 1.0)])
    assert len(problems) == 1 and "loss" in problems[0]
    problems = lora_step.compare([result("hf", 12.0, 1.0), result("ftcli", 12.0, 1.1)])
    assert len(problems) == 1 and "grad norm" in problems[0]
    assert lora_step.compare([result("hf", 12.0, 1.0), result("ftcli", float("nan"), 1.0)])
    assert lora_step.compare([result("hf", 12.0, 1.0, ok=False), result("ftcli", 1.0, 1.0)]) == []


def test_peers_that_are_not_installed_are_skipped_with_a_notice():
    keep, notes = lora_step.available_modes(["hf", "ftcli"])
    assert keep == ["hf", "ftcli"] and notes == []


@pytest.mark.slow
def test_bench_plumbing_end_to_end_on_a_tiny_shape(tmp_path):
    """Checkpoint once, run hf and ftcli each in its own process, compare first steps (CPU smoke test)."""
    folder = lora_step.checkpoint_dir(tmp_path, "tiny-llama")
    assert (folder / "done").exists() and lora_step.checkpoint_dir(tmp_path, "tiny-llama") == folder
    results = []
    for mode in ("hf", "ftcli", "ftcli-fast"):
        spec = dict(arch="tiny-llama", mode=mode, folder=str(folder), seq=32, batch=2, steps=3, r=4, gc=True,
                    budget_gib=0.5, profile=str(tmp_path / "prof" / f"{mode}.txt") if mode == "ftcli" else None)
        results.append(lora_step.run_in_subprocess(spec, timeout=600))
    hf, ours, fast = results
    # --profile: the ops table, and the timeline for Perfetto
    assert "Self CPU" in (tmp_path / "prof" / "ftcli.txt").read_text()
    with gzip.open(tmp_path / "prof" / "ftcli.trace.json.gz") as trace:
        assert any(e.get("name") in ("aten::mm", "aten::addmm") for e in json.load(trace)["traceEvents"])
    assert hf.ok and ours.ok and fast.ok, (hf.error, ours.error, fast.error)
    assert hf.trainable_params == ours.trainable_params > 0
    assert len(hf.step_times) == 3 and hf.tokens_per_second > 0
    assert lora_step.compare(results) == []  # same loss and grad norm as plain HF on the first step
    broken = [lora_step.ModeResult(**{**vars(fast), "first_loss": fast.first_loss * 1.5})]
    assert lora_step.compare([hf, ours] + broken)  # a wrong ftcli-fast row is caught too


def test_gpu_busy_time_counts_overlapping_intervals_once():
    assert lora_step.covered([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert lora_step.covered([(3, 4)]) == 1 and lora_step.covered([]) == 0


def test_ftcli_modes_run_the_memory_presets(monkeypatch):
    """ftcli = lean (whole layers), ftcli-minimal = the same with attention and MLP as separate blocks."""
    monkeypatch.setattr(lora_step, "_device", lambda: "cuda")
    config = lora_step.make_config("llama3-8b")
    lean = lora_step._ftcli_plan("ftcli", config, True, 16, (4, 2048), None, False)
    minimal = lora_step._ftcli_plan("ftcli-minimal", config, True, 16, (4, 2048), None, False)
    assert lean.offload and minimal.offload and lean.recomputed == minimal.recomputed == 32
    assert minimal.split and not lean.split
    assert "memory: minimal" in minimal.describe() and "memory: lean" in lean.describe()


def test_max_seq_doubles_the_batch1_sequence_until_a_step_fails(monkeypatch, tmp_path):
    seen = []

    def fake_run(spec, timeout):
        seen.append((spec["seq"], spec["batch"], spec["gc"]))
        ok = spec["seq"] <= 64
        return lora_step.ModeResult(arch=spec["arch"], mode=spec["mode"], ok=ok, seq=spec["seq"], batch=1,
                                error=None if ok else "OOM: CUDA out of memory")

    monkeypatch.setattr(lora_step, "run_in_subprocess", fake_run)
    attempts = lora_step.max_seq("tiny-llama", "ftcli", tmp_path, r=4, start=16, limit=1024, timeout=10)
    assert [a.seq for a in attempts] == [16, 32, 64, 128]
    assert [a.ok for a in attempts] == [True, True, True, False]
    assert all(batch == 1 and gc for _, batch, gc in seen)
    capped = lora_step.max_seq("tiny-llama", "ftcli", tmp_path, r=4, start=16, limit=32, timeout=10)
    assert [a.seq for a in capped] == [16, 32]  # never past the limit
