"""The fuzz suite: every bad recipe, dataset, argument, template and signal of cases.py through the real CLI
(typer's CliRunner, in-process). Each case must exit with its documented code, name the file and line (or the
field, row or argument) in its message, show no traceback, and leave the previous run byte for byte intact.

Most cases stop before any model loads; the template cases load the tiny builtin model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fuzz.cases import CASES, GOOD, Case, jsonl
from ftcli.cli import app
from ftcli.data import render_limits
from helpers.runs import finished_run, killed_during_swap, snapshot

runner = CliRunner()

BASE = {"model": {"name": "builtin:tiny-llama3", "max_seq_length": 64}, "template": {"name": "llama3"},
        "dataset": {"path": "{data}"}, "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 1, "per_device_train_batch_size": 2}, "output_dir": "{prev}"}


def fill(value, places: dict[str, str]):
    """Put the case's paths into its placeholders (only the known ones: `{bogus}` stays)."""
    if isinstance(value, str):
        for key, path in places.items():
            value = value.replace("{" + key + "}", path)
        return value
    if isinstance(value, dict):
        return {k: fill(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, places) for v in value]
    return value


def merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


PATCHES = {
    "interrupt-recipe": lambda mp, prev: mp.setattr("ftcli.recipe.load_any", _interrupt),
    "interrupt-data": lambda mp, prev: mp.setattr("ftcli.data.formats.read_rows", _interrupt),
    "interrupt-model": lambda mp, prev: mp.setattr("ftcli.models.pretrained.load", _interrupt),
    "interrupt-doctor": lambda mp, prev: mp.setattr("ftcli.doctor.run_for_training", _interrupt),
    "interrupt-trainer": lambda mp, prev: mp.setattr("ftcli.runner.train.build_trainer", _interrupt),
    "sigkill-after-rename": lambda mp, prev: killed_during_swap("rename", prev),
    "sigkill-after-mark": lambda mp, prev: killed_during_swap("mark", prev),
}


def write_case(case: Case, tmp: Path, places: dict[str, str]) -> None:
    data = Path(places["data"])
    if case.data is not None or case.kind != "data":
        content = case.data if case.data is not None else jsonl(GOOD, GOOD, GOOD, GOOD)
        data.write_bytes(content if isinstance(content, bytes) else jsonl(*content))
    recipe = BASE
    if case.template is not None:
        template = Path(places["template"])
        template.write_bytes(case.template if isinstance(case.template, bytes) else case.template.encode())
        recipe = merged(recipe, {"template": {"name": "{template}"}})
    path = Path(places["recipe"])
    if isinstance(case.recipe, bytes):
        path.write_bytes(case.recipe)
    elif isinstance(case.recipe, str):
        path.write_text(fill(case.recipe, places))
    else:
        path.write_text(yaml.safe_dump(fill(merged(recipe, case.recipe or {}), places), sort_keys=False))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(render_limits, "SECONDS", 1.0)
    monkeypatch.setattr(render_limits, "_timed_out", {})
    places = {"tmp": str(tmp_path), "prev": str(tmp_path / "prev"), "recipe": str(tmp_path / "recipe.yaml"),
              "data": str(tmp_path / case.data_name), "template": str(tmp_path / "chat.jinja")}
    before = finished_run(tmp_path / "prev")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("a folder of the user's own")
    (tmp_path / "a-file").write_text("a file of the user's own")
    write_case(case, tmp_path, places)
    if case.patch:
        PATCHES[case.patch](monkeypatch, tmp_path / "prev")

    result = runner.invoke(app, fill(case.args, places))

    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output and "error: unexpected" not in output and "ftcli-crash" not in output
    assert result.exit_code == case.rc, output[-3000:]
    for name in fill(case.names, places):
        assert name in output, f"{name!r} not in:\n{output[-3000:]}"
    assert snapshot(tmp_path / "prev") == before, "the previous run changed"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prev.")) == [], "a swap was left over"
    assert (tmp_path / "mine" / "thesis.tex").is_file() and (tmp_path / "a-file").is_file()
