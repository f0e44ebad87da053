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
