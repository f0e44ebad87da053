"""Reading a recipe file: YAML with line numbers, aliases, --set overrides, and readable errors."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftcli.errors import RecipeError
from ftcli.recipe.schema import Recipe, Section, section_class
from ftcli.recipe.suggest import suggestion
from ftcli.recipe.yaml_source import compose



def canonicalize(data: Any, model: type[Section], path: tuple, where: dict[tuple, str], source: str) -> Any:
    """Rename aliases to canonical field names, recording each key's "file:line" under its canonical path."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}  # canonical name -> the key the recipe used for it
    own_lines = getattr(data, "lines", {})
    for key, value in data.items():
        name = model.aliases.get(key, key)
        if name in out:
            first = given_as[name]
            raise RecipeError([f"{source}:{own_lines.get(key, '?')}: `{'.'.join(path + (key,))}` and "
                               f"`{'.'.join(path + (first,))}` (line {own_lines.get(first, '?')}) are the same setting "
                               f"(`{name}`); keep one"])
        given_as[name] = key
        if key in own_lines:
            where[path + (name,)] = f"{source}:{own_lines[key]}"
        sub = section_class(model, name)
        out[name] = canonicalize(value, sub, path + (name,), where, source) if sub else value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (["train", "learning_rate"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError([f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.learning_rate=1e-4"])
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError([f"--set {text!r}: the key path is empty"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError([f"--set {text!r}: the value is not valid YAML ({err})"]) from None
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any, text: str, root: type[Section] = Recipe) -> tuple:
    """Set data[parts...] = value, creating sections on the way, honouring aliases at each level.

    Returns the canonical key path that was set.
    """
    model: type[Section] | None = root
    node = data
    path: tuple = ()
    for i, part in enumerate(parts):
        name = model.aliases.get(part, part) if model else part
        if model is not None and name not in model.model_fields:
            near = suggestion(model, tuple(parts[: i + 1]))
            raise RecipeError([f"--set {text}: unknown key `{'.'.join(parts[: i + 1])}`"
                               + (f" (did you mean `{near}`?)" if near else "")])
        path += (name,)
        if i == len(parts) - 1:
            node[name] = value
            return path
        child = node.get(name)
        if model is not None and section_class(model, name) is None and not _is_mapping(model, name):
            child = None  # a plain value such as train.learning_rate: nothing can sit under it
        elif child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise RecipeError([f"--set {text}: `{'.'.join(parts[: i + 1])}` is not a section"])
        model = section_class(model, name) if model else None
        node = child


def _is_mapping(model: type[BaseModel], name: str) -> bool:
    """Whether field `name` of `model` holds a free mapping (dataset.columns), which --set may reach into."""
    annotation = model.model_fields[name].annotation
    return any(getattr(a, "__origin__", a) is dict for a in (*getattr(annotation, "__args__", ()), annotation))


def model_at(path: tuple, root: type[BaseModel] = Recipe) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in path:
        model = section_class(model, str(part)) if model else None
    return model


def format_errors(err: ValidationError, source: str, lines: dict[tuple, str], prefix: str = "",
                  root: type[BaseModel] = Recipe) -> list[str]:
    """One located message per problem. `prefix` (e.g. `stages[1].`) goes before every key path, for a stage of a
    pipeline validated as its own recipe."""
    problems = []
    seen_union: dict[tuple, int] = {}
    for item in err.errors():
        # pydantic adds the union member's type (e.g. "list[str]") to loc; drop those parts.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p[:1].isupper())))
        if len(loc) < len(item["loc"]) and loc in seen_union:
            # Another member of the same union failed too: add its expectation to the first message.
            problems[seen_union[loc]] += f"; or {item['msg'].lower()}"
            continue
        dotted = prefix + ".".join(str(p) for p in loc) or "(top level)"
        line = None
        for n in range(len(loc), 0, -1):
            line = lines.get(tuple(str(p) for p in loc[:n]))
            if line:
                break
        where = line or source
        kind = item["type"]
        if kind == "extra_forbidden":
            near = suggestion(model_at(tuple(str(p) for p in loc[:-1]), root), tuple(str(p) for p in loc))
            message = f"unknown key `{dotted}`"
            if near:
                message += f" (did you mean `{near}`?)"
        elif kind == "missing":
            message = f"`{dotted}` is required but missing"
        elif kind == "value_error" and str(item.get("msg", "")).startswith("Value error, ["):
            # Cross-field rules: one message per rule, each with its own key path.
            for rule in item["msg"][len("Value error, "):].split(" | "):
                rule_path, _, rule_msg = rule[1:].partition("] ")
                rule_line = lines.get(tuple(rule_path.split(".")))
                rule_where = rule_line or source
                problems.append(f"{rule_where}: {prefix}{rule_path}: {rule_msg}")
            continue
        else:
            got = item.get("input")
            shown = repr(got) if not isinstance(got, dict) else "a mapping"
            message = f"`{dotted}`: {item['msg'].removeprefix('Value error, ')} (got {shown})"
        if len(loc) < len(item["loc"]):
            seen_union[loc] = len(problems)
        problems.append(f"{where}: {message}")
    return problems


def read_data(path: str | Path) -> dict:
    """The recipe file as plain data, its keys remembering their lines; RecipeError when it is no recipe."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}: recipe file not found"],
                          hint="pass the path of a .yaml recipe, e.g. recipes/quickstart.yaml")
    data = compose(_read_text(path), str(path))
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: a recipe must be a mapping of sections (model:, dataset:, train:, ...)"])
    return data


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                now: _dt.datetime | None = None) -> Recipe:
    """Read, override and validate a single-stage recipe; raise RecipeError listing every problem."""
    path = Path(path)
    source = str(path)
    data = read_data(path)
    if "stages" in data:
        raise RecipeError([f"{source}:{data.lines['stages']}: this is a pipeline recipe (`stages:`), which runs "
                           "several recipes in turn"], hint="`ftcli train` and `ftcli validate` run pipelines")
    lines: dict[tuple, str] = {}
    data = canonicalize(data, Recipe, (), lines, source)
    for text in overrides:
        parts, value = parse_override(text)
        lines[apply_override(data, parts, value, text)] = f"--set {text}"
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_errors(err, source, lines)) from None
    return recipe.model_copy(update={"output_dir": fill_output_dir(recipe.output_dir, path, now)})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise RecipeError([f"{path}:{line}: not UTF-8 text (byte 0x{err.object[err.start]:02x})"],
                          hint="save the recipe as UTF-8") from None
    except OSError as err:
        raise RecipeError([f"{path}: cannot read the recipe: {err.strerror}"]) from None


PLACEHOLDERS = ("{name}", "{timestamp}")


def fill_output_dir(output_dir: str, path: Path, now: _dt.datetime | None = None) -> str:
    """`{name}` is the recipe file's stem, `{timestamp}` makes each run of the same recipe unique."""
    unknown = [p for p in re.findall(r"\{[^{}]*\}", output_dir) if p not in PLACEHOLDERS]
    if unknown:
        raise RecipeError([f"{path}: output_dir {output_dir!r}: unknown placeholder {unknown[0]}; "
                           f"output_dir may use {' and '.join(PLACEHOLDERS)}"])
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return output_dir.replace("{name}", Path(path).stem).replace("{timestamp}", stamp)


def to_yaml(recipe: Recipe, extra: dict | None = None) -> str:
    """The resolved recipe with canonical names and defaults filled, plus optional run facts."""
    data = recipe.model_dump(mode="json")
    if extra:
        data["_run"] = extra
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
