"""However a run ends, its manifest says so (done, failed: why, interrupted), Ctrl-C prints the command that
resumes it, a full disk is said in words, and --resume refuses a recipe the checkpoint cannot follow."""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ftcli import recipe
from ftcli.cli import app
from ftcli.errors import BadInput, TrainingFailed
from ftcli.runner import outcome, outputs
from ftcli.runner import train as training
from helpers.runs import write_jsonl, write_recipe

runner = CliRunner()


def status_of(run_dir) -> str:
    return yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())["_run"]["status"]


def checkpointed(tmp_path, name="run", **train):
    return write_recipe(tmp_path / f"{name}.yaml", model={"name": "builtin:tiny-llama3", "max_seq_length": 64},
                        train={"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4, **train},
                        output_dir=str(tmp_path / name))


def test_a_failed_start_is_recorded_as_failed_with_its_cause(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "wizard", "content": "x"}]}])
    path = write_recipe(tmp_path / "r.yaml", dataset={"path": str(data)}, model={"doctor": "off"})
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    status = status_of(tmp_path / "run")
    assert status.startswith("failed: ") and "line 1" in status and "wizard" in status


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                 'device" })'),  # what safetensors raises
])
def test_a_full_disk_names_the_folder_and_the_free_space(tmp_path, monkeypatch, error):
    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(outputs, "save_weights", full)
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 1})
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    run = tmp_path / "run"
    assert f"the disk is full: no space left on the device holding {run}" in result.stderr
    assert " free)" in result.stderr and "GiB" in result.stderr and "--resume" in result.stderr
    assert status_of(run).startswith("failed: the disk is full")


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path):
    assert outcome.free_space(tmp_path / "not" / "yet").endswith(("GiB", "MiB"))
    assert outcome.as_failure(ValueError("a bug"), tmp_path) is None  # bugs keep their traceback


def test_other_os_errors_are_runtime_failures_in_words(tmp_path):
    failure = outcome.as_failure(PermissionError(errno.EACCES, "Permission denied", "/x/adapter"), tmp_path)
    assert isinstance(failure, TrainingFailed) and failure.message == "could not write or read /x/adapter: " \
                                                                      "Permission denied"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["sigint", "sigterm"])
def test_ctrl_c_records_interrupted_and_prints_the_command_that_resumes(tmp_path, signal_name):
    path = checkpointed(tmp_path, save_total_limit=None)
    env = {**os.environ, "FTCLI_TEST_FAULT": f"{signal_name}-at-step:2"}
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(path), "--set", "train.seed=7"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 130 and "Traceback" not in out.stderr
    assert status_of(tmp_path / "run") == "interrupted"
    command = out.stderr.split("continue from checkpoint-2 with:\n", 1)[1].strip().splitlines()[0]
    words = shlex.split(command)
    assert words[:3] == ["ftcli", "train", str(path)] and words[-1] == "--resume" and "train.seed=7" in words
    again = subprocess.run([sys.executable, "-m", "ftcli", *words[1:]], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert status_of(tmp_path / "run") == "done"


def test_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "build_trainer", interrupted)
    result = runner.invoke(app, ["train", str(checkpointed(tmp_path))])
    assert result.exit_code == 130 and "nothing to resume" in result.stderr and "--overwrite" in result.stderr
    assert status_of(tmp_path / "run") == "interrupted"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with a complete checkpoint to resume from (trained once for the resume tests)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    path = checkpointed(tmp_path, max_steps=2, save_steps=1)
    training.run(recipe.load(path))
    return path


@pytest.mark.parametrize("override, change", [
    ("lora.r=4", "lora.r: 8 -> 4"), ("model.name=builtin:tiny-qwen3", "model.name: 'builtin:tiny-llama3' -> "),
    ("train.stage=dpo", "train.stage: 'sft' -> 'dpo'"), ("lora=null", "lora: {"),
])
def test_resume_refuses_an_incompatible_change(trained, override, change):
    args = [override, "dataset.format=preference"] if override.startswith("train.stage") else [override]
    with pytest.raises(BadInput) as info:
        training.run(recipe.load(trained, args), resume=True, allow_changes=True)
    assert "the checkpoint cannot follow" in info.value.message and change in info.value.message


def test_resume_lists_compatible_changes_and_needs_allow_changes(trained):
    changed = recipe.load(trained, ["train.learning_rate=5e-4", "train.max_steps=3"])
    with pytest.raises(BadInput) as info:
        training.run(changed, resume=True)
    message = info.value.message
    assert "train.learning_rate: 0.001 -> 0.0005" in message and "train.max_steps: 2 -> 3" in message
    assert "--allow-changes" in info.value.hint
    notes = []
    result = training.run(changed, resume=True, allow_changes=True, log=notes.append)
    assert any("train.max_steps: 2 -> 3" in n for n in notes)
    assert [m["step"] for m in result.metrics if "loss" in m][-1] == 3


def test_allow_changes_without_resume_is_bad_input(trained):
    result = runner.invoke(app, ["train", str(trained), "--allow-changes"])
    assert result.exit_code == 2 and "--allow-changes goes with --resume" in result.stderr


def test_rows_left_with_no_trained_token_are_counted_in_the_dataset_line(tmp_path):
    long_question = {"messages": [{"role": "user", "content": "why " * 200}, {"role": "assistant", "content": "ok"}]}
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = write_jsonl(tmp_path / "d.jsonl", [short] * 4 + [long_question] * 3)
    path = write_recipe(tmp_path / "r.yaml", dataset={"path": str(data)}, model={"max_seq_length": 48},
                        train={"max_steps": 1})
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "dataset: 4 train / 0 eval rows (messages); 0 skipped, 3 truncated to 48 tokens, 3 dropped with no " \
           "trained token left" in result.stdout
    assert "dropped rows" in result.stdout
    facts = yaml.safe_load((tmp_path / "run" / "recipe.resolved.yaml").read_text())["_run"]["dataset"]
    assert facts["without_targets"] == 3 and facts["train_rows"] == 4
