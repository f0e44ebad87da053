"""The command line as a user meets it: help, version, exit codes, and no tracebacks on bad input."""

import subprocess
import sys

import pytest

from ftcli import __version__
from helpers.runs import REPO, write_jsonl, write_recipe


def ftcli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ftcli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_version_and_help(tmp_path):
    out = ftcli("--version", cwd=tmp_path)
    assert out.returncode == 0 and __version__ in out.stdout
    out = ftcli("--help", cwd=tmp_path)
    assert out.returncode == 0 and "train" in out.stdout and "validate" in out.stdout
    out = ftcli("train", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "--set KEY=VALUE" in out.stdout and "--dry-run" in out.stdout
    assert "<bool>" not in out.stdout and "list[str]" not in out.stdout  # flags show as flags
    assert max(len(line) for line in out.stdout.splitlines()) <= 80


def test_validate_prints_the_resolved_recipe(tmp_path):
    out = ftcli("validate", REPO / "recipes" / "quickstart.yaml", "--set", "train.lr=1e-3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "learning_rate: 0.001" in out.stdout and "per_device_train_batch_size" in out.stdout


@pytest.mark.parametrize("content, overrides, expected", [
    ("model: {name: x}\ndataset: {path: d}\ntrain: {learnin_rate: 1}\n", [], "did you mean `learning_rate`"),
    ("model: {name: [x}\n", [], "YAML syntax error"),
    ("model: {name: x}\ndataset: {path: d}\n", ["train.batch_size=-1"], "--set train.batch_size=-1"),
])
def test_bad_recipes_exit_2_with_a_message_and_no_traceback(tmp_path, content, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    args = [a for o in overrides for a in ("--set", o)]
    for command in ("validate", "train"):
        out = ftcli(command, path, *args, cwd=tmp_path)
        assert out.returncode == 2
        assert expected in out.stderr and "Traceback" not in out.stderr


def test_bad_data_row_exits_2_naming_the_row(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    path = write_recipe(tmp_path / "r.yaml", dataset={"path": str(data), "format": "messages"})
    out = ftcli("train", path, cwd=tmp_path)
    assert out.returncode == 2 and "d.jsonl, line 1" in out.stderr and "Traceback" not in out.stderr


def test_missing_recipe_and_unknown_model_exit_2(tmp_path):
    out = ftcli("train", tmp_path / "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr
    path = write_recipe(tmp_path / "r.yaml", model={"name": "builtin:tiny-nonsense"})
    out = ftcli("train", path, cwd=tmp_path)
    assert out.returncode == 2 and "tiny-llama3" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("flag", [["--dry-run"], ["--dry-run", "true"], ["--dry-run=yes"]])
def test_dry_run_trains_nothing(tmp_path, flag):
    path = write_recipe(tmp_path / "r.yaml")
    out = ftcli("train", path, *flag, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "dry run ok" in out.stdout and not (tmp_path / "run").exists()


def test_flag_words_fold_into_the_flag():
    import typer

    from ftcli.cli import app
    from ftcli.cli.flags import normalise

    root = typer.main.get_command(app)
    assert normalise(["train", "r.yaml", "--dry-run", "false", "--overwrite", "TRUE"], root) == \
        ["train", "r.yaml", "--overwrite"]
    # a value that is not a boolean word, and a word after a non-flag option, stay as typed
    assert normalise(["train", "--set", "true", "--dry-run", "r.yaml"], root) == \
        ["train", "--set", "true", "--dry-run", "r.yaml"]


def test_validate_shows_the_memory_estimate_only_on_a_gpu_or_when_asked(tmp_path):
    import torch

    path = write_recipe(tmp_path / "r.yaml")
    plain = ftcli("validate", path, cwd=tmp_path)
    assert plain.returncode == 0 and ("estimated peak GPU memory" in plain.stdout) == torch.cuda.is_available()
    asked = ftcli("validate", path, "--memory", cwd=tmp_path)
    assert asked.returncode == 0 and "estimated peak GPU memory" in asked.stdout
