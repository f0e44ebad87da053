"""Helpers shared by the training tests: write recipes and datasets into a temp folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "real-world"


def fixtures_dir() -> Path:
    """../shared/fixtures/real-world: skipped on a user's fresh clone, required under CI=true."""
    if not FIXTURES.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real-world fixtures missing at {FIXTURES} (CI must not skip these)")
        pytest.skip(f"real-world fixtures not found at {FIXTURES}")
    return FIXTURES


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(path: Path, **sections) -> Path:
    """A minimal LoRA SFT recipe on tiny-llama3; keyword sections are merged over the defaults."""
    recipe = {
        "model": {"name": "builtin:tiny-llama3", "max_seq_length": 128},
        "template": {"name": "llama3"},
        "dataset": {"path": str(REPO / "recipes" / "data" / "quickstart.jsonl")},
        "lora": {"r": 8, "alpha": 16},
        "train": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1},
        "output_dir": str(path.parent / "run"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def conversation(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a digest of its bytes: equal snapshots mean nothing was touched."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_run(folder: Path) -> dict[str, str]:
    """A finished run as ftcli leaves it (run marker, manifest, adapter, metrics), without training one; returns
    its snapshot."""
    from ftcli.runner import replace

    folder.mkdir(parents=True)
    replace.mark(folder)
    (folder / "recipe.resolved.yaml").write_text("model: {name: builtin:tiny-llama3}\n_run: {status: done}\n")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"trained weights " * 64)
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    return snapshot(folder)


SWAP_STEPS = {  # code that SIGKILLs the process right after one step of --overwrite's swap
    "rename": "orig = replace.os.rename\ndef step(a, b):\n    orig(a, b)\n    os.kill(os.getpid(), 9)\n"
              "replace.os.rename = step\n",
    "mark": "orig = replace.mark\ndef step(d):\n    orig(d)\n    os.kill(os.getpid(), 9)\nreplace.mark = step\n",
}


def killed_during_swap(step: str, run_dir: Path) -> None:
    """SIGKILL a process in the middle of `--overwrite`'s swap of `run_dir` (after `step`), as a power cut would:
    no cleanup of any kind runs."""
    import subprocess
    import sys

    code = f"import os\nfrom ftcli.runner import replace, rundir\n{SWAP_STEPS[step]}" \
           f"rundir.prepare({str(run_dir)!r}, True)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
