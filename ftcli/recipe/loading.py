"""Reading a recipe file: YAML with line numbers, aliases, --set overrides, and readable errors."""

from __future__ import annotations

import datetime as _dt
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftcli.errors import RecipeError
from ftcli.recipe.schema import Recipe, Section, section_class


class _Located(dict):
    """A dict that remembers the source line of each key (1-based)."""

    lines: dict[str, int]


def compose(text: str, source: str) -> Any:
    """Parse YAML into plain data, keeping line numbers of mapping keys."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError([f"{where}: YAML syntax error: {problem}"]) from None
    return _node_to_data(node) if node is not None else {}


def _node_to_data(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = _Located()
        out.lines = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            out[key] = _node_to_data(value_node)
            out.lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_data(item) for item in node.value]
    # Built from the node itself: re-serializing an empty value (`key:`) gives text that does not parse back.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def canonicalize(data: Any, model: type[Section], path: tuple, where: dict[tuple, str], source: str) -> Any:
    """Rename aliases to canonical field names, recording each key's "file:line" under its canonical path."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    own_lines = getattr(data, "lines", {})
    for key, value in data.items():
        name = model.aliases.get(key, key)
        if name in out:
            raise RecipeError([f"{'.'.join(path + (key,))}: given twice (as `{name}` and its alias `{key}`)"])
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
        path += (name,)
        if i == len(parts) - 1:
            node[name] = value
            return path
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise RecipeError([f"--set {text}: `{'.'.join(parts[: i + 1])}` is not a section"])
        model = section_class(model, name) if model else None
        node = child


def closest_key(model: type[BaseModel] | None, key: str) -> str | None:
    if model is None:
        return None
    names = list(model.model_fields) + list(getattr(model, "aliases", {}))
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if match:
        return getattr(model, "aliases", {}).get(match[0], match[0])
    return None


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
            suggestion = closest_key(model_at(tuple(str(p) for p in loc[:-1]), root), str(loc[-1]))
            message = f"unknown key `{dotted}`"
            if suggestion:
                message += f" (did you mean `{suggestion}`?)"
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
    data = compose(path.read_text(encoding="utf-8"), str(path))
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


def fill_output_dir(output_dir: str, path: Path, now: _dt.datetime | None = None) -> str:
    """`{name}` is the recipe file's stem, `{timestamp}` makes each run of the same recipe unique."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return output_dir.replace("{name}", Path(path).stem).replace("{timestamp}", stamp)


def to_yaml(recipe: Recipe, extra: dict | None = None) -> str:
    """The resolved recipe with canonical names and defaults filled, plus optional run facts."""
    data = recipe.model_dump(mode="json")
    if extra:
        data["_run"] = extra
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
