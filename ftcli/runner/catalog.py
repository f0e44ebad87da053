"""The runs under a folder (runs/ by default): what each is, which is the newest, and `latest` as a target.

A run is a folder with recipe.resolved.yaml (the manifest `ftcli train` writes first). Only files are read
here, no model: `ftcli runs` answers at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftcli.errors import BadInput

MANIFEST = "recipe.resolved.yaml"
DEFAULT_ROOT = Path("runs")
LATEST = "latest"


@dataclass
class RunInfo:
    path: Path
    stage: str = "?"
    model: str = "?"
    status: str = "?"
    steps: int | None = None
    max_steps: int | None = None
    created: float = 0.0
    metrics: list[dict] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.status == "done"


def is_run(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_run(path: Path) -> RunInfo:
    """A run's facts from its manifest, metrics.jsonl and export/ (unreadable parts are left unknown)."""
    path = Path(path)
    try:
        data = yaml.safe_load((path / MANIFEST).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    train, facts = data.get("train") or {}, data.get("_run") or {}
    info = RunInfo(path=path, stage=str(train.get("stage", "sft")), model=str((data.get("model") or {}).get("name", "?")),
                   status=str(facts.get("status", "?")), created=(path / MANIFEST).stat().st_mtime)
    info.max_steps = train.get("max_steps") if isinstance(train.get("max_steps"), int) and train["max_steps"] > 0 else None
    info.metrics = read_metrics(path / "metrics.jsonl")
    steps = [m["step"] for m in info.metrics if isinstance(m.get("step"), int)]
    info.steps = max(steps) if steps else None
    info.exports = exports_of(path)
    return info


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl as dicts; a line cut short by a crash is skipped."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def exports_of(run: Path) -> list[str]:
    """What a run can be used as: merged/, model/, the GGUF quants and the Modelfile of export/."""
    found = [f"{sub}/" for sub in ("merged", "model") if (run / sub / "config.json").is_file()]
    export = run / "export"
    found += sorted(p.stem.removeprefix("model-") for p in export.glob("model-*.gguf"))
    found += ["adapter-lora.gguf"] if (export / "adapter-lora.gguf").is_file() else []
    found += ["Modelfile"] if (export / "Modelfile").is_file() else []
    return found


def list_runs(root: Path = DEFAULT_ROOT) -> list[RunInfo]:
    """Every run directly under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [read_run(p) for p in root.iterdir() if p.is_dir() and is_run(p)]
    return sorted(runs, key=lambda r: r.created, reverse=True)


def newest(root: Path = DEFAULT_ROOT, *, finished: bool = True) -> RunInfo | None:
    return next((r for r in list_runs(root) if r.finished or not finished), None)


def resolve(target: str | Path | None, root: Path = DEFAULT_ROOT, *, command: str) -> tuple[Path, str | None]:
    """A run directory for `target`: itself, or for None / `latest` the newest finished run under `root`.
    Returns (path, note); the note says which run was picked when the user named none."""
    if target is not None and str(target) != LATEST:
        return Path(target), None
    run = newest(root)
    if run is None:
        unfinished = newest(root, finished=False)
        detail = f" ({unfinished.name} is {unfinished.status})" if unfinished else ""
        raise BadInput(f"no finished run under {root}/ to {command}{detail}",
                       hint=f"name one: ftcli {command} RUN_DIR, or train one first: ftcli train recipes/quickstart.yaml")
    return run.path, f"{command}: {run.path} (the newest finished run under {root}/; name another: ftcli {command} RUN_DIR)"


def age(seconds_ago: float, short: bool = False) -> str:
    """"3 h ago" (short: "3h")."""
    for unit, size in (("d", 86400), ("h", 3600), ("min" if not short else "m", 60)):
        if seconds_ago >= size:
            return f"{seconds_ago // size:.0f}{'' if short else ' '}{unit}{'' if short else ' ago'}"
    return "now" if short else "just now"


def age_of(run: RunInfo, short: bool = False) -> str:
    return age(max(0.0, time.time() - run.created), short)
