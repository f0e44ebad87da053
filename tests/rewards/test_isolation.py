"""Without a working bubblewrap, code_tests refuses (exit 2, with the install command); it never runs code unisolated."""

import os
import subprocess
import sys

import pytest

from ftcli import recipe, rewards
from ftcli.errors import BadInput
from ftcli.rewards import isolation, sandbox
from ftcli.runner import train as training
from helpers.runs import write_jsonl, write_recipe
from helpers.sandbox import needs_sandbox


@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    isolation.probe.cache_clear()
    yield
    isolation.probe.cache_clear()


def code_tests_recipe(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", dataset={"path": "d.jsonl", "format": "prompt"},
                        train={"stage": "grpo", "per_device_train_batch_size": 4,
                               "grpo": {"num_generations": 4, "rewards": [{"type": "code_tests"}]}})
    return recipe.load(path)


def test_without_bwrap_code_tests_refuses_with_the_install_command(no_bwrap, tmp_path):
    with pytest.raises(rewards.SandboxUnavailable) as info:
        rewards.require_sandbox()
    err = info.value
    assert err.exit_code == 2 and "bubblewrap (`bwrap`) is not installed" in err.message
    assert "apt-get install bubblewrap" in err.hint and "never runs generated code outside" in err.hint
    spec = rewards.parse_specs([{"type": "code_tests"}])
    with pytest.raises(BadInput, match="reward 1 \\(code_tests\\).*bubblewrap"):
        rewards.build(spec, ["tests"])
    with pytest.raises(rewards.SandboxUnavailable):  # no fallback to running it anyway
        sandbox.run("def f():\n    return 1", ["assert f() == 1"])
    with pytest.raises(BadInput, match="train.grpo.rewards: the code_tests reward runs generated code only"):
        training.check_supported(code_tests_recipe(tmp_path))


def test_other_rewards_do_not_need_bwrap(no_bwrap, tmp_path):
    assert rewards.build(rewards.parse_specs([{"type": "format"}]), [])
    assert sandbox.run("", ["assert f() == 1"]).status == "no_code"  # nothing to run, nothing refused


def test_a_bwrap_that_cannot_make_namespaces_is_refused_with_its_reason(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(isolation.shutil, "which", lambda name: str(fake))
    isolation.probe.cache_clear()
    try:
        with pytest.raises(rewards.SandboxUnavailable, match="cannot create the sandbox here: bwrap: No permissions"):
            rewards.require_sandbox()
    finally:
        isolation.probe.cache_clear()


@needs_sandbox
def test_the_sandbox_sees_the_interpreter_and_nothing_of_home_or_the_run_dir():
    seen = ("import os, sys\ndef look():\n    return (os.getuid(), sorted(os.listdir('/')), os.path.exists(os.getcwd()),"
            f" os.path.exists({os.getcwd()!r}), os.path.exists({os.path.expanduser('~') + '/.bashrc'!r}),"
            " os.path.exists('/etc'), os.listdir(sys.prefix + '/lib/python%d.%d/site-packages' % sys.version_info[:2])"
            " if os.path.isdir(sys.prefix + '/lib/python%d.%d/site-packages' % sys.version_info[:2]) else [])")
    expected = (65534, ["dev", "proc", "tmp", "usr"], True, False, False, False, [])
    code = seen
    tests = [f"r = look()\nassert (r[0], [d for d in r[1] if d in ('dev', 'proc', 'tmp', 'usr', 'etc', 'home', 'work')],"
             f" r[2], r[3], r[4], r[5], r[6]) == {expected!r}"]
    assert sandbox.run(code, tests).score() == 1.0


def test_ftcli_train_refuses_code_tests_without_bwrap_before_loading_anything(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "write add", "tests": ["assert add(1, 2) == 3"]}] * 4)
    path = write_recipe(tmp_path / "r.yaml", dataset={"path": str(data), "format": "prompt"},
                        train={"stage": "grpo", "per_device_train_batch_size": 4,
                               "grpo": {"num_generations": 4, "rewards": [{"type": "code_tests"}]}})
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}  # no bwrap on PATH
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(path)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "bubblewrap (`bwrap`) is not installed" in text and "apt-get install bubblewrap" in text
    assert "Traceback" not in text and not (tmp_path / "run").exists()
