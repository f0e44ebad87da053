"""What a user sees of throughput: per logging step real tokens, tokens/s, seconds per step (and MFU and peak
GPU memory where a GPU is known), and the run's mean tokens/s at the end, all consistent with num_tokens."""

import pytest
from transformers import TrainerControl, TrainerState

from ftcli import recipe
from ftcli.runner import throughput
from ftcli.runner import train as training
from helpers.runs import write_recipe


def test_metrics_carry_real_tokens_rate_and_step_time_and_the_summary_the_mean(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 4, "logging_steps": 2})
    result = training.run(recipe.load(path))
    steps = [m for m in result.metrics if "loss" in m]
    assert steps and all({"real_tokens", "tokens_per_second", "seconds_per_step"} <= m.keys() for m in steps[1:])
    for before, m in zip(steps, steps[1:]):  # logged at the first step, then every logging_steps
        seconds = m["seconds_per_step"] * (m["step"] - before["step"])
        assert m["tokens_per_second"] == pytest.approx(m["real_tokens"] / seconds, rel=0.01)
    logged = sum(m.get("real_tokens", 0) for m in steps)
    assert logged == steps[-1]["num_tokens"]  # the intervals add up to TRL's cumulative count
    end = next(m for m in result.metrics if "train_runtime" in m)
    assert end["mean_tokens_per_second"] == pytest.approx(steps[-1]["num_tokens"] / end["train_runtime"], rel=0.01)
    assert "peak_gpu_gib" not in end and "mfu" not in steps[-1]  # no GPU here: no invented figures


def test_mfu_is_model_flops_over_the_gpus_peak(monkeypatch):
    """MFU = tokens/s x FLOPs per token / the GPU's peak; the interval's wall time comes from the clock."""
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = throughput.Throughput(flops_per_token=6e9)
    meter.peak_flops = 1e15
    state, control = TrainerState(), TrainerControl()
    meter.on_train_begin(None, state, control)
    state.global_step = 4
    logs = {"loss": 1.0, "num_tokens": 8000}
    meter.on_log(None, state, control, logs=logs)
    assert logs["real_tokens"] == 8000 and logs["tokens_per_second"] == 4000.0 and logs["seconds_per_step"] == 0.5
    assert logs["mfu"] == pytest.approx(4000 * 6e9 / 1e15)
