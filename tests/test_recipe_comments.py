"""Every bundled recipe's own comment command runs as written (in a folder like a fresh clone's), so the
comments cannot name the wrong file or a command that fails. The quickstart's is the README's main command,
run by tests/runner/test_train.py."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml
from typer.testing import CliRunner

from helpers.runs import REPO

COMMAND = re.compile(r"^#.*?\bftcli (train .*)$")


def comment_commands() -> list[tuple[str, str]]:
    """Each recipe's first comment command, its own trailing comment cut."""
    found = []
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = COMMAND.match(line.strip())
            if match:
                found.append((path.name, match.group(1).split("  #")[0].strip()))
                break
    return found


def runs_offline(name: str, command: str) -> bool:
    """A hub-model pipeline names its offline sibling (NAME-offline.yaml), whose own command is run instead."""
    model = yaml.safe_load((REPO / "recipes" / name).read_text())["model"]["name"]
    return model.startswith("builtin:") or "builtin:" in command


COMMANDS = comment_commands()


def test_every_recipe_has_a_comment_command_that_names_itself():
    named = {name for name, _ in COMMANDS}
    assert named == {p.name for p in (REPO / "recipes").glob("*.yaml")}
    for name, command in COMMANDS:
        assert runs_offline(name, command) or (REPO / "recipes" / name.replace(".yaml", "-offline.yaml")).is_file()
    for name, command in COMMANDS:
        assert shlex.split(command)[1] == f"recipes/{name}", (name, command)
        builtin = re.search(r"builtin:tiny-(\w+)", command)
        template = yaml.safe_load((REPO / "recipes" / name).read_text())["template"]["name"]
        assert builtin is None or builtin.group(1) == template, (name, command)  # the recipe's own family


@pytest.mark.slow
@pytest.mark.parametrize("name, command", [c for c in COMMANDS if c[0] != "quickstart.yaml" and runs_offline(*c)])
def test_the_comment_command_runs_as_written(tmp_path, monkeypatch, name, command):
    from ftcli.cli import app

    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, shlex.split(command))
    assert result.exit_code == 0, (command, result.output[-3000:])
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    if (runs[0] / "pipeline.json").exists():  # a pipeline: one run directory per stage under stages/
        assert json.loads((runs[0] / "pipeline.json").read_text())["status"] == "done"
    else:
        assert "status: done" in (runs[0] / "recipe.resolved.yaml").read_text()
    assert "it/s" in result.output  # the progress bar's rate, on every run
    if name == "qwen3-grpo.yaml":  # GRPO's summary speaks of rewards, not of a loss that is 0 by construction
        assert "groups with no reward spread" in result.output and "train loss" not in result.output
