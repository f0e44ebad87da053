"""`--overwrite` without data loss: only an ftcli run is replaced, and only once the new run trains.

A run directory carries MARKER from the moment it is created. `--overwrite` renames the old run to
a hidden sibling (`.NAME.ftcli-replaced`, one atomic rename on the same file system), creates the
new run, and deletes the old one only when training has started (`DiscardReplaced`). A start that
fails (bad data, a doctor error, Ctrl-C) puts the old run back (`restore`). A process killed in
between leaves the hidden sibling, and the next ftcli run into that output_dir puts it back before
anything else (`recover`): the old run is never lost.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import yaml
from transformers import TrainerCallback

from ftcli import __version__
from ftcli.errors import BadInput

MARKER = "ftcli-run.json"
MANIFEST = "recipe.resolved.yaml"


def aside_of(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.ftcli-replaced"


def _discarded_of(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.ftcli-discarded-{os.getpid()}"


def is_run(folder: Path) -> bool:
    """An ftcli run: it has the marker, or (runs from before the marker) a manifest with its `_run` facts."""
    if (folder / MARKER).is_file():
        return True
    manifest = folder / MANIFEST
    try:
        return manifest.is_file() and isinstance((yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}).get("_run"), dict)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return False


def mark(run_dir: Path) -> None:
    (run_dir / MARKER).write_text(json.dumps({"ftcli": __version__, "created": _dt.datetime.now().isoformat(
        timespec="seconds")}) + "\n", encoding="utf-8")


def move_aside(run_dir: Path) -> None:
    """Rename the old run out of the way; refuse anything that is not a run."""
    if not is_run(run_dir):
        shown = ", ".join(sorted(p.name for p in run_dir.iterdir())[:5])
        raise BadInput(f"--overwrite replaces only ftcli runs, and {run_dir} is not an ftcli run (it has no {MARKER}); "
                       f"it holds: {shown}. Nothing was changed.",
                       hint="choose another output_dir, or move or delete that folder yourself")
    os.rename(run_dir, aside_of(run_dir))


def restore(run_dir: Path) -> bool:
    """Put the old run back in place of a new one that never started training; True if there was one."""
    aside = aside_of(run_dir)
    if not aside.is_dir():
        return False
    if run_dir.exists():
        if any(run_dir.iterdir()) and not is_run(run_dir):
            raise BadInput(f"{run_dir} and {aside} both exist, and {run_dir} is not an ftcli run: ftcli leaves "
                           "both alone", hint=f"the earlier run is {aside}; move it back yourself")
        shutil.rmtree(run_dir)  # the new run's own files, written before it could train
    os.rename(aside, run_dir)
    return True


def recover(run_dir: Path) -> str | None:
    """After a crash during an --overwrite: the old run back in place, and a note saying so."""
    for leftover in run_dir.parent.glob(f".{run_dir.name}.ftcli-discarded-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an old run whose deletion was cut short
    if restore(run_dir):
        return (f"restored the earlier run in {run_dir}: an --overwrite of it stopped before the new run "
                "started training")
    return None


def discard(run_dir: Path) -> None:
    """The new run trains: delete the old one (renamed first, so that a kill mid-delete is never mistaken for
    a run to restore)."""
    aside = aside_of(run_dir)
    if aside.is_dir():
        trash = _discarded_of(run_dir)
        os.rename(aside, trash)
        shutil.rmtree(trash, ignore_errors=True)


class DiscardReplaced(TrainerCallback):
    """Deletes the run that --overwrite replaced, once the new one has started training."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            discard(self.run_dir)
