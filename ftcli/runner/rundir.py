"""The run directory: opening it (new, resumed or replaced), the manifest (recipe.resolved.yaml) and
metrics.jsonl."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path

from transformers import TrainerCallback

from ftcli.engine import distributed
from ftcli.errors import BadInput
from ftcli.recipe import to_yaml
from ftcli.runner import checkpoints, replace, resume_check
from ftcli.runner.catalog import read_metrics  # noqa: F401 (re-exported: train.py reads metrics.jsonl here)

PACKAGES = ("ftcli", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
            "bitsandbytes", "triton")


def prepare(output_dir: str | Path, overwrite: bool) -> Path:
    """Create the run dir (with its run marker); refuse to mix a new run into an old one unless told to
    overwrite, and then move the old run aside instead of deleting it (replace.py)."""
    path = Path(output_dir)
    try:
        if path.exists() and not path.is_dir():
            raise BadInput(f"output_dir {path} is a file, not a folder", hint="choose another output_dir")
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise _occupied(path)
            replace.move_aside(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            replace.mark(path)
        except OSError:
            replace.restore(path)
            raise
    except OSError as err:
        raise BadInput(f"output_dir {path}: cannot create the run directory there: {err.strerror}",
                       hint="choose a folder you can write to, e.g. runs/{name}-{timestamp}") from None
    return path


def _occupied(path: Path) -> BadInput:
    if replace.is_run(path):
        return BadInput(f"output_dir {path} already holds a run: pass --resume to continue it from its newest "
                        "checkpoint, or --overwrite to replace it",
                        hint="or choose another output_dir (runs/{name}-{timestamp} is new every time)")
    return BadInput(f"output_dir {path} already holds files, and they are not an ftcli run",
                    hint="choose another output_dir (runs/{name}-{timestamp} is new every time); ftcli never "
                         "replaces a folder that is not one of its runs")


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


def open_run_dir(recipe, *, overwrite: bool, dry_run: bool, resume: bool, allow_changes: bool = False,
                 log=lambda _: None) -> tuple[Path, Path | None]:
    """The run directory (rank 0 creates it, other ranks wait for it) and the checkpoint to resume from.
    An earlier run that a killed --overwrite had moved aside is put back first."""
    run_dir = Path(recipe.output_dir)
    if dry_run:
        return run_dir, None
    if distributed.is_main():
        note = replace.recover(run_dir)
        if note:
            log(note)
    if resume:
        checkpoint = checkpoints.latest(run_dir / "checkpoints")
        if checkpoint is None:
            raise BadInput(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}",
                           hint="checkpoints are written every train.save_steps; without one, start again "
                                "with --overwrite")
        for change in resume_check.check(run_dir, recipe, allow_changes):
            log(f"resuming with a changed recipe (--allow-changes): {change}")
        return run_dir, checkpoint
    if distributed.is_main():
        prepare(run_dir, overwrite)
    else:
        distributed.wait_for(run_dir / "recipe.resolved.yaml")
    return run_dir, None


def resolve_resume(recipe, recipe_path: Path):
    """`--resume` with a timestamped output_dir means the newest earlier run of this recipe."""
    return recipe.model_copy(update={"output_dir": resume_target(recipe.output_dir, recipe_path)})


def resume_target(output_dir: str, recipe_path: Path) -> str:
    """output_dir itself, or for a `{timestamp}` output_dir that does not exist yet, the newest earlier run."""
    if Path(output_dir).exists() or "{timestamp}" not in Path(recipe_path).read_text(encoding="utf-8"):
        return output_dir
    stamp = re.compile(r"\d{8}-\d{6}")
    target = Path(output_dir)
    earlier = sorted(p for p in target.parent.glob("*")
                     if p.is_dir() and stamp.sub("", p.name) == stamp.sub("", target.name)) if target.parent.exists() else []
    if not earlier:
        raise BadInput(f"--resume: no earlier run of {Path(recipe_path).name} under {target.parent}",
                       hint="set output_dir to the run to resume: --set output_dir=runs/<name>")
    return str(earlier[-1])


class Manifest:
    """recipe.resolved.yaml: the resolved recipe plus the run's facts (`_run`), rewritten as they change.
    Only rank 0 of a real (not dry) run writes it."""

    def __init__(self, run_dir: Path, recipe, *, enabled: bool, resumed_from: Path | None = None):
        self.run_dir, self.recipe, self.enabled = Path(run_dir), recipe, enabled
        self.facts = {"versions": package_versions(), "git_commit": git_commit(), "status": "running",
                      "world_size": distributed.world_size(), "seed": recipe.train.seed,
                      "resumed_from": str(resumed_from) if resumed_from else None}

    def write(self) -> None:
        """Written beside and renamed into place: a full disk leaves the previous manifest, never half a file."""
        if self.enabled:
            target = self.run_dir / "recipe.resolved.yaml"
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(to_yaml(self.recipe, self.facts), encoding="utf-8")
            os.replace(tmp, target)

    def fail(self, cause: str) -> None:
        self.set_status(f"failed: {cause}")

    def set_status(self, status: str) -> None:
        """Record how the run ended; best effort, so that the cause reaches the user even if this write fails."""
        self.facts["status"] = status
        try:
            self.write()
        except OSError:
            pass


def dataset_facts(recipe, fmt: str, report, train_set, trainable_params: int) -> dict:
    """The manifest's record of the data and the batch: rows kept and dropped, tokens per step."""
    t = recipe.train
    sequences = t.per_device_train_batch_size * t.gradient_accumulation_steps * distributed.world_size()
    mean = mean_tokens(train_set)
    return {
        "dataset": {"format": fmt, "fingerprint": report.fingerprint, "train_rows": report.train_rows,
                    "eval_rows": report.eval_rows, "skipped": report.rows_skipped,
                    "truncated": report.rows_truncated, "without_targets": report.rows_without_targets},
        "effective_batch_sequences": sequences,
        "effective_batch_tokens": round(sequences * mean),  # mean, before padding
        "mean_tokens_per_sequence": round(mean, 1),
        "trainable_parameters": trainable_params,
        "kernels_applied": [],
    }


def mean_tokens(dataset) -> float:
    """Mean tokens per training sequence (a DPO pair counts its prompt and chosen reply)."""
    columns = dataset.column_names
    if "input_ids" in columns:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    elif "prompt_ids" in columns:
        lengths = [len(p) + len(c) for p, c in zip(dataset["prompt_ids"], dataset["chosen_ids"])]
    else:
        return 0.0  # GRPO: completions are generated during training
    return sum(lengths) / max(1, len(lengths))
