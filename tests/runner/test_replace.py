"""`--overwrite` never loses data: only an ftcli run is replaced, the old run survives a failed start, and a
process killed at any point of the swap leaves the old run recoverable by the next invocation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftcli.cli import app
from ftcli.runner import replace, rundir
from helpers.runs import REPO, SWAP_STEPS, finished_run, killed_during_swap, snapshot, write_jsonl, write_recipe

runner = CliRunner()


def train(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_a_folder_that_is_not_a_run_is_never_replaced(tmp_path):
    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    for flags in ([], ["--overwrite"]):
        result = train(write_recipe(tmp_path / "r.yaml"), *flags)
        assert result.exit_code == 2, result.output
        assert "not an ftcli run" in result.stderr and "Traceback" not in result.output
    assert "thesis.tex" in result.stderr and "Nothing was changed" in result.stderr
    assert snapshot(mine) == before and leftovers(mine) == []


def test_bad_data_under_overwrite_keeps_the_finished_run(tmp_path):
    before = finished_run(tmp_path / "run")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no reply"}]}])
    result = train(write_recipe(tmp_path / "r.yaml", dataset={"path": str(bad)}), "--overwrite")
    assert result.exit_code == 2 and "bad.jsonl, line 1" in result.stderr
    assert snapshot(tmp_path / "run") == before and leftovers(tmp_path / "run") == []


def test_the_old_run_is_deleted_once_the_new_one_trains(tmp_path):
    finished_run(tmp_path / "run")
    result = train(write_recipe(tmp_path / "r.yaml", train={"max_steps": 1}), "--overwrite")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / replace.MARKER).is_file() and b"trained weights" not in (run / "adapter" /
                                                                           "adapter_model.safetensors").read_bytes()
    assert "status: done" in (run / "recipe.resolved.yaml").read_text() and leftovers(run) == []


def test_runs_from_before_the_marker_are_still_runs(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "recipe.resolved.yaml").write_text("model: {name: x}\n_run: {status: done}\n")
    assert replace.is_run(legacy)
    (legacy / "recipe.resolved.yaml").write_text("model: {name: x}\n")  # a recipe copy, not a run
    assert not replace.is_run(legacy)


@pytest.mark.parametrize("output_dir, expected", [("a-file", "is a file, not a folder"),
                                                  ("/proc/ftcli-run", "cannot create the run directory there")])
def test_an_output_dir_that_cannot_hold_a_run_is_bad_input(tmp_path, output_dir, expected):
    (tmp_path / "a-file").write_text("x")
    target = output_dir if output_dir.startswith("/") else str(tmp_path / output_dir)
    result = train(write_recipe(tmp_path / "r.yaml", output_dir=target))
    assert result.exit_code == 2 and expected in result.stderr and target in result.stderr
    assert (tmp_path / "a-file").read_text() == "x"


def killed(script: str, tmp_path: Path) -> None:
    code = "import os, signal, sys\nfrom ftcli.runner import replace, rundir\n" + script
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr


@pytest.mark.parametrize("step", sorted(SWAP_STEPS))
def test_sigkill_during_the_swap_then_the_next_run_restores_the_old_one(tmp_path, step):
    run = tmp_path / "run"
    before = finished_run(run)
    killed_during_swap(step, run)
    assert leftovers(run) == [".run.ftcli-replaced"]  # the old run is whole, under its hidden name
    assert snapshot(tmp_path / ".run.ftcli-replaced") == before

    # The next invocation, even one that fails on its data, puts the old run back first.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"nothing": 1}])
    result = train(write_recipe(tmp_path / "r.yaml", dataset={"path": str(bad)}))
    assert result.exit_code == 2 and "restored the earlier run" in result.stdout
    assert snapshot(run) == before and leftovers(run) == []


def test_sigkill_while_deleting_the_replaced_run_keeps_the_new_one(tmp_path):
    run = tmp_path / "run"
    finished_run(run)
    killed(textwrap.dedent(f"""
        rundir.prepare({str(run)!r}, overwrite=True)
        (replace.Path({str(run)!r}) / "new.txt").write_text("new run")
        replace.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        replace.discard(replace.Path({str(run)!r}))
    """), tmp_path)
    assert (run / "new.txt").is_file() and len(leftovers(run)) == 1  # the half-deleted old run, never restored
    assert replace.recover(run) is None
    assert (run / "new.txt").read_text() == "new run" and leftovers(run) == []


def test_marker_records_the_ftcli_version(tmp_path):
    run = rundir.prepare(tmp_path / "fresh", overwrite=False)
    assert json.loads((run / replace.MARKER).read_text())["ftcli"]
    assert REPO.is_dir()
