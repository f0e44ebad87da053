"""Checkpoints that are either complete or ignored, and exact resume from the newest one.

The HF Trainer writes `checkpoints/checkpoint-<step>/` (adapter or model, optimizer,
scheduler, RNG states, trainer state with the data position). After it has finished, we
copy metrics.jsonl into it and write a COMPLETE marker last: a checkpoint cut short by a
crash or SIGKILL has no marker and is never resumed from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

MARKER = "ftcli-complete.json"
METRICS = "metrics.jsonl"


class MarkComplete(TrainerCallback):
    """After each save: snapshot metrics.jsonl into the checkpoint, then write the marker."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        metrics = self.run_dir / METRICS
        if metrics.exists():
            shutil.copyfile(metrics, folder / METRICS)
        (folder / MARKER).write_text(json.dumps({"step": state.global_step}), encoding="utf-8")


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if (p / MARKER).exists() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest(checkpoints_dir: Path) -> Path | None:
    done = complete_checkpoints(checkpoints_dir)
    return done[-1] if done else None


def restore_metrics(checkpoint: Path, run_dir: Path) -> None:
    """Put back metrics.jsonl as it was at the checkpoint, so the resumed log has no duplicate steps."""
    saved = Path(checkpoint) / METRICS
    target = Path(run_dir) / METRICS
    if saved.exists():
        shutil.copyfile(saved, target)
    elif target.exists():
        target.unlink()
