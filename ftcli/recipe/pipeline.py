"""Multi-stage recipes: `stages:` runs SFT -> DPO -> GRPO (any order, any number) as one pipeline.

The top level holds what every stage shares (model, template, lora, export, output_dir) and defaults
(dataset, train). Each stage entry names its stage and overrides only what differs: `dataset` replaces the
top-level one, `train` is merged over the top-level train section key by key, `lora` (first stage, or with
`merge_before`) replaces the adapter settings. Every stage is expanded here into a complete single-stage Recipe
and validated before anything loads; a problem is reported as `stages[1].train.dpo.beta`, with file and line.

The hand-off is decided here too, as plain paths inside the run directory, so the runner only runs recipes:
a stage continues the previous stage's adapter (`model.adapter`), or with `merge_before: true` starts a fresh
adapter on the previous stage's merged weights (that stage then writes `merged/`); a full finetune continues
from the previous stage's `model/`. Export happens once, in the last stage.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from ftcli.errors import BadInput, RecipeError
from ftcli.recipe.loading import (apply_override, canonicalize, fill_output_dir, format_errors, load,
                                  parse_override, read_data)
from ftcli.recipe.schema import DatasetSection, ExportSection, LoraSection, Recipe, Section, TrainSection

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SHARED = ("model", "template", "lora", "export", "output_dir")


class StageEntry(Section):
    """One entry of `stages:`. Its sections are partial: only the keys given override the top level."""

    aliases = {"type": "stage"}
    sections: ClassVar[dict[str, type[Section]]] = {"dataset": DatasetSection, "train": TrainSection,
                                                   "lora": LoraSection}

    stage: Literal["sft", "dpo", "grpo"]
    name: str | None = Field(None, description="the stage's folder and --from name; default: the stage")
    merge_before: bool = Field(False, description="merge the previous stage's adapter into the base first and "
                                                  "train a fresh adapter (default: keep training the same one)")
    dataset: dict | None = None
    train: dict = Field(default_factory=dict)
    lora: dict | None = None


@dataclass
class PlannedStage:
    """A stage of a pipeline: its 1-based number, name, folder inside the run directory and full recipe."""

    number: int
    name: str
    merge_before: bool
    recipe: Recipe

    @property
    def folder(self) -> str:
        return f"stages/{self.number:02d}-{self.name}"


@dataclass
class Pipeline:
    """A validated multi-stage recipe. `data` is the canonical source, kept to re-plan for another output_dir."""

    source: Path
    output_dir: str
    export: ExportSection
    stages: list[PlannedStage]
    data: dict = field(repr=False, default_factory=dict)
    lines: dict = field(repr=False, default_factory=dict)

    def with_output_dir(self, output_dir: str) -> "Pipeline":
        return plan(self.data, self.lines, self.source, output_dir)

    def index_of(self, name: str) -> int:
        """The position of the stage called `name` (its name, its stage kind if unique, or its number)."""
        matches = [i for i, s in enumerate(self.stages) if name in (s.name, str(s.number))]
        if not matches:
            matches = [i for i, s in enumerate(self.stages) if s.recipe.train.stage == name]
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(s.name for s in self.stages)
        problem = "names several stages" if matches else "is not a stage of this pipeline"
        raise BadInput(f"--from {name}: {problem} (stages: {names})",
                       hint="name a stage by its `name:` or its number, e.g. --from 2")


def is_pipeline(path: str | Path) -> bool:
    return "stages" in read_data(path)


def load_any(path: str | Path, overrides: list[str] | tuple[str, ...] = (), now: _dt.datetime | None = None):
    """A Recipe for a single-stage file, a Pipeline for one with `stages:`."""
    return load_pipeline(path, overrides, now) if is_pipeline(path) else load(path, overrides, now)


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  now: _dt.datetime | None = None) -> Pipeline:
    """Read a pipeline recipe, apply --set (`train.x=` for every stage, `stages.1.train.x=` for one), validate
    every stage; raise one RecipeError listing every problem of every stage."""
    path = Path(path)
    source = str(path)
    raw = read_data(path)
    lines: dict[tuple, str] = {}
    entries = raw.pop("stages")
    data = canonicalize(raw, Recipe, (), lines, source)
    if not isinstance(entries, list) or not entries:
        raise RecipeError([f"{source}:{raw.lines['stages']}: stages: must be a list of stages, e.g. "
                           "[{stage: sft}, {stage: dpo, dataset: {path: pairs.jsonl, format: preference}}]"])
    data["stages"] = [canonical_entry(e, i, lines, source) for i, e in enumerate(entries)]
    for text in overrides:
        parts, value = parse_override(text)
        lines[override(data, parts, value, text)] = f"--set {text}"
    output_dir = fill_output_dir(str(data.get("output_dir", Recipe.model_fields["output_dir"].default)), path, now)
    return plan(data, lines, path, output_dir)


def canonical_entry(entry: Any, index: int, lines: dict, source: str) -> Any:
    """A stage entry with aliases renamed, each key's line recorded under ("stages", index, ...)."""
    if not isinstance(entry, dict):
        return entry
    path = ("stages", str(index))
    own = canonicalize(entry, StageEntry, path, lines, source)
    for key, section in StageEntry.sections.items():
        if isinstance(own.get(key), dict):
            own[key] = canonicalize(entry[key], section, path + (key,), lines, source)
    return own


def override(data: dict, parts: list[str], value: Any, text: str) -> tuple:
    """--set on a pipeline: `stages.N.` (or `stages[N].`) addresses stage N, anything else the top level."""
    head = re.fullmatch(r"stages\[(\d+)\]", parts[0])
    if head or (parts[0] == "stages" and len(parts) > 2 and parts[1].isdigit()):
        index, rest = (int(head.group(1)), parts[1:]) if head else (int(parts[1]), parts[2:])
        if index >= len(data["stages"]) or not rest:
            raise RecipeError([f"--set {text}: the pipeline has stages 0 to {len(data['stages']) - 1}"])
        entry, key = data["stages"][index], StageEntry.aliases.get(rest[0], rest[0])
        section = StageEntry.sections.get(key)
        if section is None or len(rest) == 1:
            entry[key] = value
            return ("stages", str(index), key)
        entry.setdefault(key, {})
        return ("stages", str(index), key, *apply_override(entry[key], rest[1:], value, text, section))
    return apply_override(data, parts, value, text)


def merged_over(base: dict | None, extra: dict | None) -> dict:
    """`extra` merged key by key over `base` (nested sections too), neither changed."""
    out = copy.deepcopy(dict(base or {}))
    for key, value in (extra or {}).items():
        out[key] = merged_over(out.get(key), value) if isinstance(value, dict) and isinstance(out.get(key),
                                                                                               dict) else value
    return out


def entry_problems(data: dict, entries: list, source: str, lines: dict) -> tuple[list[StageEntry], list[str]]:
    """Each stage entry's own keys validated, and the rules that span stages."""
    where = lambda *key: lines.get(key) or source  # noqa: E731
    valid, problems, seen = [], [], {}
    if "stage" in data.get("train", {}):
        problems.append(f"{where('train', 'stage')}: train.stage: in a pipeline each entry of stages: names its "
                        "own stage; remove train.stage from the top level")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{where('stages')}: stages[{i}]: a stage is a mapping, e.g. {{stage: dpo}}")
            continue
        try:
            spec = StageEntry.model_validate(entry)
        except ValidationError as err:
            problems += format_errors(err, source, {k[2:]: v for k, v in lines.items() if k[:2] == ("stages", str(i))},
                                      prefix=f"stages[{i}].", root=StageEntry)
            continue
        name = spec.name or spec.stage
        if not NAME.match(name):
            problems.append(f"{where('stages', str(i), 'name')}: stages[{i}].name: {name!r} names a folder: use "
                            "lower-case letters, digits, - and _")
        if name in seen:
            problems.append(f"{where('stages', str(i))}: stages[{i}]: a second stage called {name!r} (stages[{seen[name]}]"
                            f" is one): give each a `name:`, e.g. name: {name}-2")
        seen[name] = i
        if spec.merge_before and i == 0:
            problems.append(f"{where('stages', str(i), 'merge_before')}: stages[0].merge_before: the first stage "
                            "has no earlier adapter to merge")
        if spec.lora is not None and i > 0 and not spec.merge_before:
            problems.append(f"{where('stages', str(i), 'lora')}: stages[{i}].lora: this stage keeps training the "
                            "previous stage's adapter; set merge_before: true to merge it and start this new one")
        if spec.dataset is None and "dataset" not in data:
            problems.append(f"{where('stages', str(i))}: stages[{i}].dataset: no dataset here and none at the top "
                            "level")
        valid.append(spec)
    return valid, problems


def plan(data: dict, lines: dict, source: Path, output_dir: str) -> Pipeline:
    """Every stage as a full Recipe with its hand-off paths under `output_dir`; RecipeError lists all problems."""
    source_name = str(source)
    entries, problems = entry_problems(data, data["stages"], source_name, lines)
    if problems:
        raise RecipeError(problems)
    top = {k: v for k, v in data.items() if k != "stages"}
    stages, previous = [], None
    for i, spec in enumerate(entries):
        if spec.merge_before and previous is not None and not has_adapter(previous.recipe):
            problems.append(f"{lines.get(('stages', str(i), 'merge_before')) or source_name}: stages[{i}]."
                            "merge_before: the previous stage is a full finetune, there is no adapter to merge")
        stage_data = stage_recipe_data(top, spec, i + 1, i == len(entries) - 1,
                                       entries[i + 1] if i + 1 < len(entries) else None, previous, output_dir)
        stage_lines = {**{k: v for k, v in lines.items() if k[:1] != ("stages",)},
                       **{k[2:]: v for k, v in lines.items() if k[:2] == ("stages", str(i))}}
        try:
            recipe = Recipe.model_validate(stage_data)
        except ValidationError as err:
            problems += format_errors(err, source_name, stage_lines, prefix=f"stages[{i}].")
            previous = None
            continue
        previous = PlannedStage(i + 1, spec.name or spec.stage, spec.merge_before, recipe)
        stages.append(previous)
    if problems:
        raise RecipeError(problems)
    export = ExportSection.model_validate(top.get("export", {}))
    return Pipeline(source=Path(source), output_dir=output_dir, export=export, stages=stages, data=data, lines=lines)


def has_adapter(recipe: Recipe) -> bool:
    return recipe.lora is not None or recipe.model.adapter is not None


def stage_recipe_data(top: dict, spec: StageEntry, number: int, last: bool, following: StageEntry | None,
                      previous: PlannedStage | None, output_dir: str) -> dict:
    """One stage's recipe as data: the top level, the entry's overrides, and where its weights come from.
    `previous` is None for the first stage (or after a stage that failed validation: then no hand-off)."""
    name = spec.name or spec.stage
    out = {k: copy.deepcopy(top[k]) for k in SHARED if k in top}
    out["dataset"] = copy.deepcopy(spec.dataset if spec.dataset is not None else top.get("dataset"))
    out["train"] = merged_over(top.get("train"), spec.train) | {"stage": spec.stage}
    out["output_dir"] = str(Path(output_dir) / f"stages/{number:02d}-{name}")
    if spec.lora is not None:
        out["lora"] = copy.deepcopy(spec.lora)
    export = out.pop("export", {}) if last else {}
    formats = list(export.get("formats", [])) if last else []
    if following is not None and following.merge_before:
        formats.append("safetensors")  # the next stage starts from these merged weights
    out["export"] = {**export, "formats": formats}
    if previous is not None:
        out["model"] = handed_off_model(out.get("model", {}), previous, spec.merge_before)
        if not spec.merge_before:
            out.pop("lora", None)  # the adapter brings its own rank and targets
    return out


def handed_off_model(model: dict, previous: PlannedStage, merge_before: bool) -> dict:
    """model: for a stage after `previous`: its merged weights, its adapter on the same base, or its full model."""
    before = previous.recipe
    done = Path(before.output_dir)
    model = dict(model) | {"name": before.model.name, "adapter": None}
    if merge_before:
        model["name"] = str(done / "merged")
    elif has_adapter(before):
        model["adapter"] = str(done / "adapter")
    else:
        model["name"] = str(done / "model")
    return model


__all__ = ["Pipeline", "PlannedStage", "StageEntry", "is_pipeline", "load_any", "load_pipeline"]
