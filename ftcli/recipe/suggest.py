"""Did-you-mean for key paths: the closest key in the same section, else the same name elsewhere in the schema
(`learning_rate` at the top level -> `train.learning_rate`)."""

from __future__ import annotations

import difflib
from typing import Iterator

from pydantic import BaseModel

from ftcli.recipe.schema import Recipe, section_class


def closest_key(model: type[BaseModel] | None, key: str) -> str | None:
    """The canonical name of the key of `model` closest to `key`."""
    if model is None:
        return None
    names = list(model.model_fields) + list(getattr(model, "aliases", {}))
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if match:
        return getattr(model, "aliases", {}).get(match[0], match[0])
    return None


def schema_paths(model: type[BaseModel] = Recipe, prefix: tuple = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of the schema, sections and their fields, aliases included."""
    for name in [*model.model_fields, *getattr(model, "aliases", {})]:
        path = (*prefix, name)
        yield path
        sub = section_class(model, getattr(model, "aliases", {}).get(name, name))
        if sub is not None:
            yield from schema_paths(sub, path)


def canonical(path: tuple[str, ...]) -> str:
    """`train.lr` -> `train.learning_rate`."""
    model, out = Recipe, []
    for part in path:
        name = getattr(model, "aliases", {}).get(part, part) if model else part
        out.append(name)
        model = section_class(model, name) if model else None
    return ".".join(out)


def suggestion(model: type[BaseModel] | None, path: tuple[str, ...]) -> str | None:
    """What to suggest for the unknown key path `path` whose last part is not a key of `model`."""
    near = closest_key(model, path[-1])
    if near:
        return near  # a sibling: its name alone reads best beside the misspelt one
    everywhere = [p for p in schema_paths() if p[-1] == path[-1]]
    if everywhere:
        return canonical(everywhere[0])
    dotted = {".".join(p): p for p in schema_paths()}
    match = difflib.get_close_matches(".".join(path), list(dotted), n=1, cutoff=0.6)
    return canonical(dotted[match[0]]) if match else None
