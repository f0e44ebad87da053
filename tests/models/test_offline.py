"""Offline is detected at once: one clear error naming the builtin of the model's family, or the cached copy."""

import subprocess
import sys
import time

import pytest

from ftcli.errors import BadInput
from ftcli.models import offline, pretrained
from helpers.runs import REPO


@pytest.fixture
def no_network(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(offline, "_probe_network", lambda: "no network: huggingface.co did not answer")


@pytest.mark.parametrize("name, builtin", [("google/gemma-3-4b-it", "builtin:tiny-gemma3"),
                                           ("Qwen/Qwen3-8B", "builtin:tiny-qwen3"),
                                           ("microsoft/Phi-3.5-mini-instruct", "builtin:tiny-phi3"),
                                           ("mistralai/Mistral-7B-Instruct-v0.3", "builtin:tiny-mistral"),
                                           ("meta-llama/Llama-3.1-8B-Instruct", "builtin:tiny-llama3")])
def test_an_uncached_hub_model_offline_fails_at_once_naming_its_familys_builtin(no_network, monkeypatch, name,
                                                                                builtin):
    monkeypatch.setattr(offline, "cached_snapshot", lambda repo: None)
    started = time.perf_counter()
    with pytest.raises(BadInput) as err:
        pretrained.resolve_name(name)
    assert time.perf_counter() - started < 1.0
    assert "offline" in err.value.message and "not in the local cache" in err.value.message
    assert f"--set model.name={builtin}" in err.value.hint


def test_a_cached_hub_model_offline_loads_from_the_cache(no_network, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert pretrained.resolve_name("org/tiny") == str(snapshot)


def test_online_hub_ids_and_local_names_pass_through(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(offline, "_probe_network", lambda: None)
    assert pretrained.resolve_name("org/model") == "org/model"
    (tmp_path / "org").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not offline.looks_like_hub_id("org")  # a folder, not a hub id


def test_hf_hub_offline_counts_as_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline.offline_reason() == "HF_HUB_OFFLINE=1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(offline, "_probe_network", lambda: None)
    assert offline.offline_reason() is None


@pytest.mark.parametrize("recipe, builtin", [("gemma3-sft.yaml", "builtin:tiny-gemma3"),
                                             ("qwen3-grpo.yaml", "builtin:tiny-qwen3")])
def test_train_offline_prints_one_error_line_without_retries(tmp_path, recipe, builtin):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(REPO / "recipes" / recipe)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=env)
    seconds = time.perf_counter() - started
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "offline" in errors[0], out.stderr
    assert f"--set model.name={builtin}" in out.stderr and "Traceback" not in out.stderr
    assert "retry" not in (out.stdout + out.stderr).lower() and "Retrying" not in out.stderr
    assert seconds < 30, seconds  # the interpreter's start and imports; no network wait


def test_validate_offline_answers_at_once(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    out = subprocess.run([sys.executable, "-m", "ftcli", "validate", "recipes/gemma3-sft.yaml", "--memory"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "memory estimate: unavailable (model.name 'google/gemma-3-4b-it': the Hugging Face hub is offline" \
        in out.stdout and "retry" not in (out.stdout + out.stderr).lower()
