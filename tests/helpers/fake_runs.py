"""Run directories as `ftcli train` leaves them, written from plain data (no training): for the run catalogue."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml


def fake_run(root: Path, name: str, *, stage: str = "sft", status: str = "done", metrics: list[dict] | None = None,
             age_seconds: float = 0.0, max_steps: int = 10, exports: tuple[str, ...] = ()) -> Path:
    """root/name with a manifest (its mtime `age_seconds` ago), metrics.jsonl and export/model-<q>.gguf files."""
    run = root / name
    run.mkdir(parents=True)
    manifest = {"model": {"name": "builtin:tiny-llama3"}, "train": {"stage": stage, "max_steps": max_steps},
                "_run": {"status": status}}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    rows = metrics if metrics is not None else [{"step": s, "loss": 2.0 / s} for s in range(1, max_steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for quant in exports:
        (run / "export").mkdir(exist_ok=True)
        (run / "export" / f"model-{quant}.gguf").write_bytes(b"GGUF")
    stamp = os.stat(run / "recipe.resolved.yaml").st_mtime - age_seconds
    os.utime(run / "recipe.resolved.yaml", (stamp, stamp))
    return run
