"""What a pipeline's run directory remembers between runs: pipeline.json (each stage's status, timing, final
metrics and the hash of its inputs), which stages a resumed run skips, resumes or runs again, and the combined
loss.png."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path

from ftcli.data import formats
from ftcli.engine import distributed
from ftcli.errors import BadInput
from ftcli.recipe import Pipeline
from ftcli.runner import checkpoints

STATE = "pipeline.json"
# Logged values that say how training went, kept in pipeline.json as a stage's final metrics.
FINAL_KEYS = ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
              "reward", "reward_std", "format_accuracy", "mean_token_accuracy", "grad_norm", "learning_rate")


def input_hashes(pipeline: Pipeline) -> list[str]:
    """One hash per stage over its resolved recipe, its dataset's bytes and the previous stage's hash: a change
    anywhere upstream changes every hash after it."""
    hashes, previous = [], ""
    for stage in pipeline.stages:
        settings = stage.recipe.model_dump(mode="json")
        settings.pop("output_dir")
        digest = hashlib.sha256()
        digest.update(json.dumps(settings, sort_keys=True).encode())
        digest.update(formats.fingerprint_of(stage.recipe.dataset).encode())
        digest.update(previous.encode())
        previous = "sha256:" + digest.hexdigest()[:16]
        hashes.append(previous)
    return hashes


def new_state(pipeline: Pipeline, hashes: list[str]) -> dict:
    return {"recipe": str(pipeline.source), "status": "running", "started": now(), "stages": [
        {"number": s.number, "name": s.name, "stage": s.recipe.train.stage, "folder": s.folder,
         "status": "pending", "input_hash": h} for s, h in zip(pipeline.stages, hashes)]}


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # cut short while written: treated like no record, every stage runs


def write_state(run_dir: Path, state: dict) -> None:
    """Written to a temp file and renamed, so a kill never leaves half a pipeline.json. Only rank 0 writes."""
    if not distributed.is_main():
        return
    state["updated"] = now()
    tmp = Path(run_dir) / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, Path(run_dir) / STATE)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def plan_actions(pipeline: Pipeline, hashes: list[str], recorded: dict | None, *, resume: bool,
                 start: int | None) -> list[str]:
    """`skip`, `resume` or `run` for each stage.

    resume: a finished stage whose inputs hash the same is skipped; the interrupted stage continues from its
    newest complete checkpoint; everything after a stage that runs runs too (its starting weights are new).
    start (`--from`): the stages before it must be finished with unchanged inputs; it and the rest run again.
    """
    old = {s["number"]: s for s in (recorded or {}).get("stages", [])}
    actions: list[str] = []
    for i, (stage, digest) in enumerate(zip(pipeline.stages, hashes)):
        before = old.get(stage.number, {})
        same = before.get("input_hash") == digest
        if start is not None:
            if i < start and not (before.get("status") == "done" and same):
                state = "changed inputs" if before.get("status") == "done" else before.get("status", "not run")
                raise BadInput(f"--from {pipeline.stages[start].name}: stage {stage.number} ({stage.name}) before "
                               f"it is not finished with these inputs ({state})",
                               hint="use --resume to run every stage that needs it, or start --from an earlier "
                                    "stage")
            actions.append("skip" if i < start else "run")
        elif not resume or "run" in actions or "resume" in actions:
            actions.append("run")
        elif before.get("status") == "done" and same:
            actions.append("skip")
        elif same and checkpoints.latest(Path(stage.recipe.output_dir) / "checkpoints") is not None:
            actions.append("resume")
        else:
            actions.append("run")
    return actions


def final_metrics(metrics: list[dict]) -> dict:
    """The last logged value of each key that says how training went."""
    out = {}
    for record in metrics:
        for key in FINAL_KEYS:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[key] = value
    if metrics:
        out["steps"] = max(m.get("step", 0) for m in metrics)
    return out


def plot_pipeline(stage_metrics: list[tuple[str, list[dict]]], out: Path) -> Path | None:
    """loss.png for the whole pipeline: each stage's train loss on one axis of optimizer steps, stage after
    stage, with a line at each boundary."""
    series, offset = [], 0
    for name, metrics in stage_metrics:
        points = [(offset + m["step"], m["loss"]) for m in metrics if "loss" in m]
        series.append((name, points, offset))
        offset += max([m.get("step", 0) for m in metrics] or [0])
    if not any(points for _, points, _ in series):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for name, points, start in series:
        if start:
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("optimizer step (stages in turn)")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

