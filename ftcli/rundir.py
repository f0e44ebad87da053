"""The run directory: atomic folder writes, metrics.jsonl, loss.png and the resolved recipe."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from transformers import TrainerCallback

from ftcli.errors import BadInput

PACKAGES = ("ftcli", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
            "bitsandbytes", "triton")


def prepare(output_dir: str | Path, overwrite: bool) -> Path:
    """Create the run dir; refuse to mix a new run into an old one unless told to overwrite."""
    path = Path(output_dir)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise BadInput(f"output_dir {path} already holds a run: pass --resume to continue it from its newest "
                           "checkpoint, or --overwrite to replace it",
                           hint="or choose another output_dir (runs/{name}-{timestamp} is new every time)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp folder beside `final`; rename it into place only if the block finishes.

    A crash leaves a `.tmp-*` folder that nothing mistakes for a complete adapter or model.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class MetricsFile(TrainerCallback):
    """Append every logged dict (with its step) to metrics.jsonl, flushed at once so nothing is lost."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics: list[dict], out: Path) -> Path | None:
    """loss.png: train loss per step, eval loss where measured."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
