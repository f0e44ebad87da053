"""`ftcli import`: configs of Axolotl, LLaMA-Factory and the TRL CLI converted into an ftcli recipe.

    imported = importers.import_config("axolotl.yml")     # detects the tool
    imported.rows                                        # every source key: mapped / ignored / unsupported
    imported.yaml                                        # the recipe, validated, with the rows as a header

The written recipe validates (an import that cannot produce a valid recipe is refused with the reason);
configs that are not training configs (an Accelerate launch config) or train what ftcli does not (KTO, reward
models) are refused with what to do instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from ftcli.errors import BadInput
from ftcli.recipe.importers import axolotl, llamafactory, trl
from ftcli.recipe.importers.table import STATUSES, Row, refuse
from ftcli.recipe.loading import compose, format_errors
from ftcli.recipe.schema import Recipe

TOOLS = ("axolotl", "llamafactory", "trl")
SECTION_ORDER = ("model", "template", "dataset", "lora", "train", "export", "output_dir")


@dataclass
class Imported:
    tool: str
    source: Path
    recipe: Recipe
    data: dict  # the recipe as written (only what the source set; defaults stay defaults)
    rows: list[Row]

    @property
    def yaml(self) -> str:
        return header(self) + yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)


def detect(data: dict) -> str:
    """Which tool wrote this config, from keys only that tool uses."""
    if "compute_environment" in data or "distributed_type" in data:
        raise BadInput("this is an Accelerate launch config (how to start processes), not a training config",
                       hint="ftcli starts processes itself: `ftcli train RECIPE --nproc N`, with "
                            "train.distributed: ddp (default) or fsdp")
    if {"model", "dataset"} <= set(data) and isinstance(data.get("model"), dict):
        raise BadInput("this is already an ftcli recipe", hint="run `ftcli validate` on it")
    if "base_model" in data or isinstance(data.get("datasets"), list) or "micro_batch_size" in data:
        return "axolotl"
    if {"stage", "finetuning_type", "cutoff_len", "template"} & set(data) or isinstance(data.get("dataset"), str):
        return "llamafactory"
    if "model_name_or_path" in data:
        return "trl"
    raise BadInput("not a config ftcli import knows (Axolotl, LLaMA-Factory or TRL CLI)",
                   hint="Axolotl configs have base_model and datasets; LLaMA-Factory ones model_name_or_path and "
                        "stage; TRL CLI ones model_name_or_path and dataset_name")


def import_config(path: str | Path, stage: str | None = None, tool: str | None = None) -> Imported:
    """Read a peer config and convert it; BadInput (exit 2) when it cannot be imported, with the reason."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: config file not found")
    data = compose(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a training config is a mapping of keys")
    tool = tool or detect(data)
    if stage is not None and tool != "trl":
        raise BadInput("--stage is for TRL CLI configs (the stage is the `trl` command); this config names its own")
    if tool == "axolotl":
        mapping = axolotl.convert(data)
    elif tool == "llamafactory":
        mapping = llamafactory.convert(data, path.parent)
    else:
        mapping = trl.convert(data, stage)
    rows = mapping.finish()
    # plain data (json round trip): the source's mappings remember their lines, which yaml cannot write
    written = json.loads(json.dumps({k: mapping.recipe[k] for k in SECTION_ORDER if k in mapping.recipe}))
    try:
        recipe = Recipe.model_validate(written)
    except ValidationError as err:
        problems = "; ".join(format_errors(err, str(path), {}))
        raise refuse(mapping.tool, f"the converted recipe is not valid: {problems}",
                     "fix the source value named above, or write that recipe key by hand") from None
    return Imported(tool=tool, source=path, recipe=recipe, data=written, rows=rows)


def header(imported: Imported) -> str:
    """The recipe's opening comment: where it came from and every key that did not carry over."""
    lines = [f"# Imported by `ftcli import` from {imported.source} ({imported.tool}).",
             "# " + ", ".join(f"{imported.count(s)} {s}" for s in STATUSES) + " keys."]
    todo = [r for r in imported.rows if r.status == "unsupported"]
    if todo:
        lines.append("# Unsupported (not carried over; what to do instead):")
        lines += [f"#   {r.key}: {r.detail}" for r in todo]
    return "\n".join(lines) + "\n"


__all__ = ["Imported", "Row", "STATUSES", "TOOLS", "detect", "import_config"]
