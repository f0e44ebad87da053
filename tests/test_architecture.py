"""The package layout holds: arrows point one way down (ALLOWED), no import cycles, no private names
imported across modules, only ftcli.engine imports ftcli.kernels, and no module grows past its size budget.

The import graph is read from the source (ast), function-level imports included: a cycle hidden in a
function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"ftcli": REPO / "ftcli", "ftcli.kernels": REPO / "kernels"}

# Which packages each package may import. `base` is ftcli/__init__.py, errors.py and files.py.
ALLOWED = {
    "base": set(),
    "kernels": set(),
    "recipe": {"base"},
    "data": {"recipe", "base"},
    "models": {"data", "recipe", "base"},
    "engine": {"models", "data", "recipe", "base", "kernels"},
    "rewards": {"recipe", "base"},
    "stages": {"engine", "rewards", "models", "data", "recipe", "base"},
    "doctor": {"engine", "models", "data", "recipe", "base"},
    "export": {"models", "data", "recipe", "base"},
    "runner": {"stages", "doctor", "export", "engine", "rewards", "models", "data", "recipe", "base"},
    "bench": {"runner", "stages", "engine", "models", "data", "recipe", "base"},
    "cli": {"runner", "bench", "stages", "doctor", "export", "engine", "rewards", "models", "data", "recipe",
            "base"},
}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60
# Longer functions, each with the reason it stays whole (written beside it in the code too).
LONG_FUNCTIONS = {
    "ftcli.kernels.logit_rows.ce_rows": "one Triton kernel: splitting it costs a launch per part",
}


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    found = {}
    for root_name, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([root_name, *parts])
            if root_name == "ftcli" and parts[:1] == ["kernels"]:
                continue
            found[name] = path
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "files", "__init__"):
        return "base"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names) for every `import` of an ftcli module in `path`, at any depth."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "ftcli"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ftcli":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(m, node.lineno, []) for m in submodules]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest:
                out.append((target, node.lineno, rest))
    return out


def graph() -> dict[str, list[tuple[str, int, list[str]]]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return cycles


def layer_violations(imports: dict[str, list[tuple[str, int, list[str]]]]) -> list[str]:
    bad = []
    for module, targets in imports.items():
        source = package_of(module)
        for target, line, _ in targets:
            wanted = package_of(target)
            if wanted != source and wanted not in ALLOWED[source]:
                bad.append(f"{module}:{line} imports {target} ({source} -> {wanted} is not an allowed arrow)")
    return bad


def private_imports(imports: dict[str, list[tuple[str, int, list[str]]]]) -> list[str]:
    return [f"{module}:{line} imports private {target}.{n}"
            for module, targets in imports.items() for target, line, names in targets
            for n in names if n.startswith("_") and not n.startswith("__") and target != module]


def private_attribute_uses() -> list[str]:
    """`module._name` where `module` is an ftcli module imported by name (`from ftcli.data import templates`)."""
    found, known = modules(), set(modules())
    bad = []
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftcli"):
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                                if f"{node.module}.{a.name}" in known})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                bad.append(f"{name}:{node.lineno} uses private {aliases[node.value.id]}.{node.attr}")
    return bad


def body_lines(node) -> int:
    """Lines of a function's body, its signature and docstring left out (a typer command's options are its
    signature)."""
    body = node.body[1:] if (node.body and isinstance(node.body[0], ast.Expr)
                             and isinstance(getattr(node.body[0], "value", None), ast.Constant)
                             and isinstance(node.body[0].value.value, str)) else node.body
    return (body[-1].end_lineno - body[0].lineno + 1) if body else 0


def simple_edges(imports) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in targets} for m, targets in imports.items()}


def test_every_package_says_what_it_owns_and_may_import():
    for name, path in modules().items():
        if path.name == "__init__.py" and name.count(".") == 1 and name != "ftcli.kernels":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert "may import" in doc.lower(), f"{path}: the docstring must say what the package may import"
    assert set(ALLOWED) - {"base", "kernels"} == {package_of(m) for m in modules()} - {"base", "kernels"}


def test_arrows_point_one_way_down():
    assert layer_violations(graph()) == []


def test_no_import_cycles():
    assert find_cycles(simple_edges(graph())) == []


def test_no_private_names_cross_modules():
    assert private_imports(graph()) == []
    assert private_attribute_uses() == []


def test_only_the_engine_imports_the_kernels():
    users = {package_of(m) for m, targets in graph().items() for t, _, _ in targets
             if package_of(t) == "kernels"} - {"kernels"}
    assert users <= {"engine"}, users


def test_the_checks_catch_what_they_are_for():
    """Negative controls on synthetic graphs: a cycle, an upward arrow, a private import."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    upward = {"ftcli.recipe.schema": [("ftcli.engine.patch", 3, ["ALL_OPS"])]}
    assert layer_violations(upward) == [
        "ftcli.recipe.schema:3 imports ftcli.engine.patch (recipe -> engine is not an allowed arrow)"]
    assert private_imports({"ftcli.cli.app": [("ftcli.export.run", 9, ["_template"])]}) == [
        "ftcli.cli.app:9 imports private ftcli.export.run._template"]
    real = graph()
    real["ftcli.recipe.schema"] = [*real["ftcli.recipe.schema"], ("ftcli.cli.app", 1, [])]
    real["ftcli.cli.app"] = [*real["ftcli.cli.app"], ("ftcli.recipe.schema", 1, [])]
    assert ["ftcli.cli.app", "ftcli.recipe.schema"] in find_cycles(simple_edges(real))


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name):
    path = modules()[name]
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path} has {lines} lines: split it by job"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = body_lines(node)
            qualified = f"{name}.{node.name}"
            if length > MAX_FUNCTION_LINES and qualified not in LONG_FUNCTIONS:
                pytest.fail(f"{path}:{node.lineno} {node.name} is {length} lines (> {MAX_FUNCTION_LINES})")
