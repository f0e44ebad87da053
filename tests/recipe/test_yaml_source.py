"""Hostile or careless YAML: alias bombs, recursive aliases and duplicate keys stop at once, in words."""

import time

import pytest

from ftcli import recipe
from ftcli.errors import RecipeError
from ftcli.recipe import yaml_source

# The 289-byte "billion laughs" of the issue: nine levels of nine aliases, 9**9 values once expanded.
BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
) + "\nmodel: {name: builtin:tiny-llama3}\ndataset: {path: d.jsonl}\n"


def problems(text, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    return path, info.value.problems


def test_alias_bomb_is_refused_quickly(tmp_path):
    started = time.perf_counter()
    path, [problem] = problems(BOMB, tmp_path)
    assert time.perf_counter() - started < 30  # a hang guard, not a speed test: the cap stops it in about a second
    assert problem.startswith(f"{path}:") and "more than 100,000 values" in problem and "aliases" in problem


def test_recursive_alias_names_its_line_and_key(tmp_path):
    path, [problem] = problems("model: {name: builtin:tiny-llama3}\ndataset: {path: d.jsonl}\nloop: &x [1, *x]\n",
                               tmp_path)
    assert problem.startswith(f"{path}:3:") and "`loop.1`" in problem and "contains itself" in problem


def test_recursive_mapping_alias(tmp_path):
    _, [problem] = problems("model: &m {name: builtin:tiny-llama3, again: *m}\ndataset: {path: d.jsonl}\n", tmp_path)
    assert "contains itself" in problem and "model.again" in problem


def test_deep_nesting_is_capped(tmp_path):
    deep = "[" * 200 + "]" * 200
    _, [problem] = problems(f"model: {{name: x}}\ndataset: {{path: d}}\nx: {deep}\n", tmp_path)
    assert "nests more than 64 levels" in problem


def test_duplicate_key_names_both_lines(tmp_path):
    path, [problem] = problems("model:\n  name: builtin:tiny-llama3\ntrain:\n  learning_rate: 1.0e-4\n"
                               "  max_steps: 3\n  learning_rate: 2.0e-4\ndataset: {path: d.jsonl}\n", tmp_path)
    assert problem.startswith(f"{path}:6:")
    assert "`train.learning_rate` is given twice, on line 4 and on line 6" in problem


def test_duplicate_section_is_an_error_too(tmp_path):
    _, [problem] = problems("model: {name: a}\ndataset: {path: d}\nmodel: {name: b}\n", tmp_path)
    assert "`model` is given twice, on line 1 and on line 3" in problem


def test_ordinary_aliases_still_work():
    data = yaml_source.compose("base: &b {r: 8}\nlora: *b\nlist: [*b, *b]\n", "r.yaml")
    assert data["lora"] == {"r": 8} and data["list"] == [{"r": 8}, {"r": 8}]
    assert data.lines == {"base": 1, "lora": 2, "list": 3}


def test_non_utf8_recipe_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"model: {name: x}\ndataset: {path: \xff.jsonl}\n")
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    assert info.value.problems[0].startswith(f"{path}:2:") and "not UTF-8" in info.value.problems[0]
