"""YAML text -> plain data that remembers each key's line, with hostile input refused in words.

PyYAML shares one node for every use of an alias, so a few hundred bytes of nested aliases
(a "billion laughs" bomb) expand to billions of values, and an alias inside its own anchor is a
cycle. Both are stopped here while the data is built: a cap on expanded values and on nesting
depth, and a check for a node that contains itself. A key given twice is an error naming both
lines (YAML would silently keep the last one).
"""

from __future__ import annotations

from typing import Any

import yaml
import yaml.constructor

from ftcli.errors import RecipeError

MAX_VALUES = 100_000  # expanded scalars, lists and mappings: a real recipe has a few hundred
MAX_DEPTH = 64  # nested lists and mappings: a real recipe has fewer than ten levels


class Located(dict):
    """A dict that remembers the source line of each key (1-based)."""

    lines: dict[str, int]


def compose(text: str, source: str) -> Any:
    """Parse YAML into plain data, keeping line numbers of mapping keys; raise RecipeError on abuse."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError([f"{where}: YAML syntax error: {problem}"]) from None
    return _Builder(source).build(node, (), ()) if node is not None else {}


class _Builder:
    def __init__(self, source: str):
        self.source, self.count = source, 0
        self.scalars = yaml.constructor.SafeConstructor()  # YAML 1.1 scalars as safe_load reads them, without re-parsing

    def _where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def build(self, node: yaml.Node, path: tuple, ancestors: tuple) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise RecipeError([f"{self._where(node)}: the recipe expands to more than {MAX_VALUES:,} values "
                               "through YAML aliases (*name); a recipe needs a few hundred"],
                              hint="write the values out, or use fewer nested aliases")
        if id(node) in ancestors:
            raise RecipeError([f"{self._where(node)}: `{'.'.join(path) or '(top level)'}` is a YAML alias that "
                               "contains itself (a recursive anchor), which has no finite value"])
        if len(ancestors) >= MAX_DEPTH:
            raise RecipeError([f"{self._where(node)}: `{'.'.join(path[:4])}...` nests more than {MAX_DEPTH} levels "
                               "deep; a recipe needs fewer than ten"])
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, (*ancestors, id(node)))
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, str(i)), (*ancestors, id(node))) for i, item in enumerate(node.value)]
        return self.scalars.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: tuple, ancestors: tuple) -> Located:
        out = Located()
        out.lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise RecipeError([f"{self._where(key_node)}: a key must be a plain name, not a list or mapping"])
            key = str(self.scalars.construct_object(key_node))
            line = key_node.start_mark.line + 1
            if key in out:
                raise RecipeError([f"{self.source}:{line}: `{'.'.join((*path, key))}` is given twice, on line "
                                   f"{out.lines[key]} and on line {line}; YAML would silently keep the last one"],
                                  hint="remove one of them")
            out[key] = self.build(value_node, (*path, key), ancestors)
            out.lines[key] = line
        return out
