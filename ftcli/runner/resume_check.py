"""`--resume` compares the recipe with the one the run was trained with, before loading anything.

A change that alters what the checkpoint holds (model, LoRA shape, stage) cannot resume: the
weights and optimizer states would not fit, and torch would print a wall of size mismatches. A
change that only steers the rest of the run (learning rate, steps, data, logging) is listed and
needs `--allow-changes`, so that a resumed run never silently differs from the one started.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ftcli.errors import BadInput

# Key paths whose change makes the checkpoint unusable (a prefix covers everything under it).
INCOMPATIBLE = ("model.name", "model.load_in_4bit", "model.adapter", "lora.r", "lora.target_modules", "lora.use_dora",
                "train.stage", "train.distributed")
IGNORED = ("output_dir",)  # resolved per run ({timestamp})


def flatten(data, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, object] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _section_switched(path: str, other: dict) -> str | None:
    """The section that is set on one side and none on the other (`lora: null` against `lora.r: 8`)."""
    for key in other:
        if path.startswith(key + "."):
            return key
        if key.startswith(path + "."):
            return path
    return None


def _at(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def changes(before: dict, after: dict) -> list[tuple[str, object, object]]:
    """(key path, old, new) for every value that differs. A key the old run did not record at all (an older
    ftcli with fewer settings) is not a change."""
    old, new = flatten(before), flatten(after)
    found: dict[str, tuple] = {}
    for path in sorted(set(old) | set(new)):
        if path.startswith(IGNORED):
            continue
        if path in old and path in new:
            if old[path] != new[path]:
                found[path] = (old[path], new[path])
            continue
        section = _section_switched(path, new if path in old else old)
        if section is not None:
            found[section] = (_at(before, section), _at(after, section))
    return [(path, *values) for path, values in found.items()]


def _is_incompatible(path: str) -> bool:
    return path == "lora" or any(path == key or path.startswith(key + ".") for key in INCOMPATIBLE)


def check(run_dir: Path, recipe, allow_changes: bool) -> list[str]:
    """Raise BadInput on an incompatible change, or on a compatible one without allow_changes; return the
    compatible changes (as lines) that allow_changes let through."""
    manifest = Path(run_dir) / "recipe.resolved.yaml"
    try:
        before = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []  # a checkpoint without its recipe: nothing to compare with
    before.pop("_run", None)
    found = changes(before, recipe.model_dump(mode="json"))
    lines = [f"{path}: {old!r} -> {new!r}" for path, old, new in found]
    bad = [line for (path, _, _), line in zip(found, lines) if _is_incompatible(path)]
    if bad:
        raise BadInput(f"--resume: the recipe changed in a way the checkpoint cannot follow: {'; '.join(bad)}",
                       hint="resume with the recipe the run was started with, or start a new run (another "
                            "output_dir, or --overwrite)")
    if lines and not allow_changes:
        raise BadInput(f"--resume: the recipe differs from the one this run was started with: {'; '.join(lines)}",
                       hint="pass --resume --allow-changes to continue with these changes, or undo them")
    return lines
