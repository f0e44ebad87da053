"""Interrupted runs resume exactly; a NaN stops the run at once and keeps what was written."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftcli.runner import checkpoints, rundir
from ftcli import recipe
from ftcli.runner import train as training
from ftcli.errors import BadInput, TrainingFailed
from helpers.runs import write_recipe


def resumable_recipe(tmp_path, name, **train):
    return write_recipe(
        tmp_path / f"{name}.yaml", model={"name": "builtin:tiny-llama3", "max_seq_length": 64},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 2e-3,
               "logging_steps": 1, "seed": 3, **train},
        output_dir=str(tmp_path / name))


def ftcli(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ftcli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def losses(run_dir):
    return [m["loss"] for m in rundir.read_metrics(run_dir / "metrics.jsonl") if "loss" in m]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = ftcli(["train", resumable_recipe(tmp_path, "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    path = resumable_recipe(tmp_path, "killed")
    killed = ftcli(["train", path], {"FTCLI_TEST_FAULT": "sigkill-at-step:4"})
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    run = tmp_path / "killed"
    assert checkpoints.latest(run / "checkpoints").name == "checkpoint-4"
    assert not (run / "adapter").exists()
    # A checkpoint cut short (no completion marker) is never resumed from.
    (run / "checkpoints" / "checkpoint-5").mkdir()

    again = ftcli(["train", path])
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    resumed = ftcli(["train", path, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-4" in resumed.stdout

    assert torch.allclose(torch.tensor(losses(run)), torch.tensor(losses(tmp_path / "straight")), rtol=1e-5)
    assert [m["step"] for m in rundir.read_metrics(run / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4, 5, 6]
    a = load_file(run / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    manifest = yaml.safe_load((run / "recipe.resolved.yaml").read_text())["_run"]
    assert manifest["resumed_from"].endswith("checkpoint-4") and manifest["status"] == "done"


def test_save_total_limit_keeps_the_newest_checkpoints(tmp_path):
    path = resumable_recipe(tmp_path, "limited", save_total_limit=2)
    result = training.run(recipe.load(path))
    names = [p.name for p in checkpoints.complete_checkpoints(result.run_dir / "checkpoints")]
    assert names == ["checkpoint-4", "checkpoint-6"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    path = resumable_recipe(tmp_path, "none")
    with pytest.raises(BadInput, match="no complete checkpoint"):
        training.run(recipe.load(path), resume=True)


def test_nan_loss_stops_at_that_step_and_keeps_what_was_written(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCLI_TEST_FAULT", "nan-loss-at-step:3")
    path = resumable_recipe(tmp_path, "nan")
    with pytest.raises(TrainingFailed) as info:
        training.run(recipe.load(path))
    message = info.value.message
    assert "at optimizer step 3" in message and "checkpoint-2" in message
    assert "learning rate" in info.value.hint and "fp16" in info.value.hint and "data row" in info.value.hint
    run = tmp_path / "nan"
    assert [m["step"] for m in rundir.read_metrics(run / "metrics.jsonl") if "loss" in m] == [1, 2]
    assert checkpoints.latest(run / "checkpoints").name == "checkpoint-2"
    status = yaml.safe_load((run / "recipe.resolved.yaml").read_text())["_run"]["status"]
    assert status.startswith("failed") and "step 3" in status


def test_non_finite_gradient_is_caught_before_the_optimizer_step():
    from ftcli.stages.guards import GradNormGuard, NonFiniteLoss

    model = torch.nn.Linear(3, 1)
    model.weight.grad = torch.tensor([[1.0, float("inf"), 0.0]])
    state = type("State", (), {"global_step": 6})()
    with pytest.raises(NonFiniteLoss, match="gradient norm became inf at optimizer step 7"):
        GradNormGuard().on_pre_optimizer_step(None, state, None, model=model)


def test_resume_with_a_timestamped_output_dir_picks_the_newest_earlier_run(tmp_path):
    import datetime as dt

    path = write_recipe(tmp_path / "stamped.yaml", train={"max_steps": 2, "save_steps": 1},
                        output_dir=str(tmp_path / "runs" / "{name}-{timestamp}"))
    first = recipe.load(path, now=dt.datetime(2026, 1, 1, 10, 0, 0))
    training.run(first)
    second = recipe.load(path, now=dt.datetime(2026, 1, 1, 11, 0, 0))
    training.run(second)
    later = recipe.load(path, now=dt.datetime(2026, 1, 1, 12, 0, 0))  # what `ftcli train --resume` loads
    resolved = rundir.resolve_resume(later, path)
    assert resolved.output_dir == second.output_dir
    with pytest.raises(BadInput, match="no earlier run"):
        other = write_recipe(tmp_path / "other.yaml", output_dir=str(tmp_path / "runs" / "{name}-{timestamp}"))
        rundir.resolve_resume(recipe.load(other), other)
