"""TRL reward callables from the declarations, checked against the dataset before training."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from typing import Callable


from ftcli.errors import BadInput
from ftcli.recipe.rewards import FunctionReward
from ftcli.rewards import isolation, sandbox
from ftcli.rewards.cases import normalise_tests
from ftcli.rewards.scoring import length_of, completion_text, score_exact_match, score_format, score_json_valid, score_length, score_numeric_match, score_regex


TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


class Reward:
    """A TRL reward function: called with the batch, returns one float (or None) per completion."""

    def __init__(self, name: str, spec, score: Callable[..., float | None], column: str | None = None):
        self.__name__ = name
        self.spec = spec
        self.score = score
        self.column = column

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float | None]:
        completions = completions or []
        prompts = prompts or [""] * len(completions)
        ids = completion_ids or [None] * len(completions)
        targets = kwargs.get(self.column) if self.column else None
        out = []
        for i, completion in enumerate(completions):
            text = completion_text(completion)
            prompt = completion_text(prompts[i]) if isinstance(prompts[i], list) else str(prompts[i] or "")
            out.append(self.score(text, prompt, ids[i], targets[i] if targets is not None else None))
        return out

    def __repr__(self) -> str:
        return f"Reward({self.__name__})"


class CodeTests(Reward):
    """Runs all completions of a batch in parallel sandboxes."""

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float | None]:
        spec = self.spec
        texts = [completion_text(c) for c in (completions or [])]
        tests = kwargs.get(spec.column) or [None] * len(texts)
        jobs = [(sandbox.extract_code(t), case) for t, case in zip(texts, tests)]
        results = sandbox.run_many(jobs, timeout=spec.timeout, memory_mb=spec.memory_mb,
                                   max_output_bytes=spec.max_output_kb * 1024)
        return [r.score(spec.partial_credit) for r in results]


def _builtin(spec, name: str) -> Reward:
    kind = spec.type
    if kind == "exact_match":
        return Reward(name, spec, lambda t, p, i, target: score_exact_match(spec, t, target), spec.column)
    if kind == "numeric_match":
        return Reward(name, spec, lambda t, p, i, target: score_numeric_match(spec, t, target), spec.column)
    if kind == "regex":
        return Reward(name, spec, lambda t, p, i, target: score_regex(spec, t))
    if kind == "format":
        return Reward(name, spec, lambda t, p, i, target: score_format(spec, t, p))
    if kind == "length":
        return Reward(name, spec, lambda t, p, i, target: score_length(spec, length_of(spec, t, i)))
    if kind == "json_valid":
        return Reward(name, spec, lambda t, p, i, target: score_json_valid(spec, t))
    if kind == "code_tests":
        return CodeTests(name, spec, lambda *a: None, spec.column)
    raise AssertionError(kind)


def _where(index: int, spec) -> str:
    return f"train.grpo.rewards: reward {index + 1} ({spec.type}{' ' + repr(spec.name) if spec.name else ''})"


def import_function(path: str, where: str) -> Callable:
    """Import "package.module:function"; the current folder is importable, as with `python -m`."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise BadInput(f"{where}: cannot import module {module_name!r} ({err})",
                       hint="the module must be installed or sit in the folder you run ftcli from") from None
    except Exception as err:  # the user's module raised while importing
        raise BadInput(f"{where}: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = (f"did you mean {module_name}:{close[0]}?" if close
                else f"callables in {module_name}: {', '.join(names) or 'none'}")
        raise BadInput(f"{where}: module {module_name!r} has no function {attr!r}", hint=hint)
    if not callable(fn):
        raise BadInput(f"{where}: {path} is a {type(fn).__name__}, not a function")
    return fn


def _user_function(spec: FunctionReward, name: str, where: str, columns: list[str]) -> Reward:
    fn = import_function(spec.function, where)
    params, has_var_kw, batch = _check_signature(fn, spec, where, columns)
    if batch:
        def call(prompts=None, completions=None, completion_ids=None, **kwargs):
            pass_kw = kwargs if has_var_kw else {k: v for k, v in kwargs.items() if k in params}
            for key, value in (("prompts", prompts), ("completion_ids", completion_ids)):
                if key in params or has_var_kw:
                    pass_kw[key] = value
            result = fn(completions=completions, **pass_kw, **spec.kwargs)
            result = list(result) if result is not None else result
            if result is None or len(result) != len(completions):
                raise BadInput(f"{where}: {spec.function} returned {None if result is None else len(result)} "
                               f"rewards for {len(completions)} completions")
            return [None if r is None else float(r) for r in result]

        return _BatchReward(name, spec, call)

    wanted = [n for n in params if n not in ("completion",)]

    def score(text, prompt, ids, _target, row):
        pass_kw = {}
        for n in wanted:
            if n == "prompt":
                pass_kw[n] = prompt
            elif n == "completion_ids":
                pass_kw[n] = ids
            elif n in row:
                pass_kw[n] = row[n]
        if has_var_kw:
            pass_kw.update({k: v for k, v in row.items() if k not in pass_kw and k not in TRL_EXTRAS})
        value = fn(completion=text, **pass_kw, **spec.kwargs)
        return None if value is None else float(value)

    return _RowReward(name, spec, score)


def _check_signature(fn, spec: FunctionReward, where: str, columns: list[str]) -> tuple:
    """(parameters, takes **kwargs, batch style) of a user reward, or a BadInput saying what does not fit."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise BadInput(f"{where}: cannot read the signature of {spec.function}") from None
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    positional_only = [n for n, p in params.items() if p.kind is p.POSITIONAL_ONLY]
    if positional_only:
        raise BadInput(f"{where}: {spec.function} has positional-only parameters {positional_only}; "
                       "rewards are called with keyword arguments")
    batch = "completions" in params
    single = "completion" in params
    if batch == single:
        raise BadInput(f"{where}: {spec.function} must take either `completions` (a list: TRL style, returns a "
                       "list of floats) or `completion` (one text, returns a float)",
                       hint="e.g. def my_reward(completions, answer, **kwargs) -> list[float]")
    given = {"prompts", "completions", "completion_ids", *TRL_EXTRAS} if batch else {"prompt", "completion",
                                                                                       "completion_ids"}
    available = given | set(columns) | set(spec.kwargs)
    missing = [n for n, p in params.items()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and n not in available]
    if missing:
        raise BadInput(f"{where}: {spec.function} needs {', '.join(repr(m) for m in missing)}, which is neither a "
                       f"dataset column ({', '.join(columns) or 'none'}) nor an argument ftcli passes "
                       f"({', '.join(sorted(given))})",
                       hint="rename the parameter after a dataset column, give it a default, or set it in kwargs:")
    unknown_kwargs = [k for k in spec.kwargs if k not in params and not has_var_kw]
    if unknown_kwargs:
        raise BadInput(f"{where}: kwargs {unknown_kwargs} are not parameters of {spec.function}")
    return params, has_var_kw, batch


class _BatchReward(Reward):
    def __init__(self, name, spec, call):
        super().__init__(name, spec, lambda *a: None)
        self._call = call

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        return self._call(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)


class _RowReward(Reward):
    """Per-completion user function: gets its own row's column values."""

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        completions = completions or []
        prompts = prompts or [""] * len(completions)
        ids = completion_ids or [None] * len(completions)
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)}
        out = []
        for i, completion in enumerate(completions):
            row = {k: v[i] for k, v in columns.items()}
            prompt = completion_text(prompts[i]) if isinstance(prompts[i], list) else str(prompts[i] or "")
            out.append(self.score(completion_text(completion), prompt, ids[i], None, row))
        return out


def build(specs: list, columns: list[str], first_row: dict | None = None) -> list[Reward]:
    """Check every reward against the dataset and return the TRL callables, in order.

    Raises BadInput naming the reward (its index and type) and what is wrong.
    """
    if not specs:
        raise BadInput("train.grpo.rewards is empty: GRPO needs at least one reward",
                       hint="e.g. rewards: [{type: numeric_match, column: answer}]")
    rewards, seen = [], {}
    for index, spec in enumerate(specs):
        where = _where(index, spec)
        base = spec.name or spec.type
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        if spec.needs_column and spec.column not in columns:
            close = difflib.get_close_matches(spec.column, columns, n=1)
            raise BadInput(f"{where} reads the dataset column {spec.column!r}, which the dataset does not have "
                           f"(columns: {', '.join(columns)})",
                           hint=f"set column: {close[0]}" if close else "set `column:` on the reward, or map your "
                                "column with dataset.columns")
        if spec.type == "code_tests":
            isolation.require(where)  # no sandbox, no code_tests: never a fallback to running code unisolated
        if spec.type == "code_tests" and first_row is not None:
            try:
                normalise_tests(first_row.get(spec.column))
            except ValueError as err:
                raise BadInput(f"{where}: column {spec.column!r} of the first row: {err}") from None
        if spec.type == "function":
            rewards.append(_user_function(spec, name, where, columns))
        else:
            rewards.append(_builtin(spec, name))
    return rewards


def weights(specs: list) -> list[float]:
    return [float(spec.weight) for spec in specs]
