"""GRPO rewards declared in the recipe: schema, validation before training, and the scoring functions.

A recipe lists rewards under `train.grpo.rewards`, each with a `type` and a `weight`:

    rewards:
      - {type: numeric_match, column: answer, tolerance: 1.0e-6}
      - {type: format, weight: 0.5}
      - {type: function, function: "my_pkg.rewards:brevity"}

`build(specs, columns)` checks every reward against the dataset (columns exist, user modules
import, signatures fit) and returns TRL reward callables: `fn(prompts, completions, **columns)
-> list[float]`, each with a `__name__` under which TRL logs `rewards/<name>/mean`.
This module imports nothing heavy at import time: recipe.py imports the schema from here.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import os
import re
import sys
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftcli.errors import BadInput

# --------------------------------------------------------------------------- schema

EXTRACT_HELP = ("auto, full, last_number, boxed, last_line, after_think, after:<marker> or regex:<pattern with one "
                "group>")


def _check_extract(value: str) -> str:
    if value in ("auto", "full", "last_number", "boxed", "last_line", "after_think"):
        return value
    if value.startswith("after:") and len(value) > len("after:"):
        return value
    if value.startswith("regex:"):
        try:
            re.compile(value[len("regex:"):])
        except re.error as err:
            raise ValueError(f"extract {value!r}: the regex does not compile ({err})") from None
        return value
    raise ValueError(f"unknown extract {value!r}; use one of: {EXTRACT_HELP}")


class _RewardBase(BaseModel):
    """Fields every reward has; unknown keys are an error that suggests the closest valid key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    needs_column: ClassVar[bool] = False

    name: str | None = Field(None, description="name for the logs (rewards/<name>/mean); default: the type")
    weight: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.5)
                    hint = f" (did you mean `{close[0]}`?)" if close else f"; valid keys: {', '.join(cls.model_fields)}"
                    raise ValueError(f"unknown key `{key}`{hint}")
        return data


class ExactMatchReward(_RewardBase):
    """1 when the extracted answer equals the dataset column (after normalising case and spaces), else 0."""

    needs_column: ClassVar[bool] = True
    type: Literal["exact_match"]
    column: str = "answer"
    extract: str = "auto"
    target_extract: str = "full"
    case_sensitive: bool = False

    @field_validator("extract", "target_extract")
    @classmethod
    def _extract_known(cls, value: str) -> str:
        return _check_extract(value)


class NumericMatchReward(_RewardBase):
    """1 when the extracted number is within tolerance of the column's number, else 0."""

    needs_column: ClassVar[bool] = True
    type: Literal["numeric_match"]
    column: str = "answer"
    extract: str = "auto"
    target_extract: str = "auto"
    tolerance: float = Field(1e-6, ge=0, description="absolute tolerance")
    relative_tolerance: float = Field(0.0, ge=0)

    @field_validator("extract", "target_extract")
    @classmethod
    def _extract_known(cls, value: str) -> str:
        return _check_extract(value)


class RegexReward(_RewardBase):
    """1 when the pattern is found (must_match: true) or not found (must_match: false), else 0."""

    type: Literal["regex"]
    pattern: str
    must_match: bool = True
    ignore_case: bool = False
    fullmatch: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"pattern {value!r} does not compile: {err}") from None
        return value


class FormatReward(_RewardBase):
    """1 for `<think>reasoning</think>` followed by a non-empty answer (matching answer_pattern if given)."""

    type: Literal["format"]
    think_tag: str = Field("think", pattern=r"^[A-Za-z_][\w-]*$")
    answer_pattern: str | None = None

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"answer_pattern {value!r} does not compile: {err}") from None
        return value


class LengthReward(_RewardBase):
    """`range`: 1 inside [min_length, max_length], falling linearly to 0 over `buffer` outside.
    `overlong`: 0 up to max_length - buffer, then linearly down to -1 at max_length (DAPO's soft penalty)."""

    type: Literal["length"]
    mode: Literal["range", "overlong"] = "range"
    unit: Literal["tokens", "chars", "words"] = "tokens"
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, gt=0)
    buffer: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "LengthReward":
        if self.mode == "range" and self.min_length is None and self.max_length is None:
            raise ValueError("a length reward in range mode needs min_length, max_length or both")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is above max_length {self.max_length}")
        if self.mode == "overlong" and (self.max_length is None or self.buffer <= 0):
            raise ValueError("overlong mode needs max_length and a buffer > 0 (the soft-penalty zone)")
        if self.mode == "overlong" and self.buffer > self.max_length:
            raise ValueError("overlong mode: buffer cannot exceed max_length")
        return self


class JsonValidReward(_RewardBase):
    """1 when the answer parses as JSON (an object with required_keys, when given), else 0."""

    type: Literal["json_valid"]
    required_keys: list[str] = Field(default_factory=list)


class CodeTestsReward(_RewardBase):
    """Fraction of the row's test cases the generated Python passes, run in a limited subprocess."""

    needs_column: ClassVar[bool] = True
    type: Literal["code_tests"]
    column: str = "tests"
    timeout: float = Field(5.0, gt=0, le=300, description="seconds of wall time per completion")
    memory_mb: int = Field(512, ge=64)
    max_output_kb: int = Field(64, ge=1)
    partial_credit: bool = True


class FunctionReward(_RewardBase):
    """A user function "package.module:function", TRL style (prompts, completions, **columns) -> list,
    or per completion (completion, [prompt], [<column>...]) -> float."""

    type: Literal["function"]
    function: str = Field(description='"package.module:function"')
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the function")

    @field_validator("function")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f'write it as "package.module:function" (e.g. "my_rewards:brevity"), got {value!r}')
        return value


REWARD_TYPES: dict[str, type[_RewardBase]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in (ExactMatchReward, NumericMatchReward, RegexReward, FormatReward, LengthReward, JsonValidReward,
                CodeTestsReward, FunctionReward)
}
RewardSpec = Annotated[Union[tuple(REWARD_TYPES.values())], Field(discriminator="type")]


class RewardSpecError(ValueError):
    """Problems with reward declarations, one message each ("reward 2 (regex): ...")."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_specs(items: Any) -> list:
    """Validate a list of reward mappings one by one so each error names its entry and type."""
    if not isinstance(items, list):
        raise RewardSpecError(["rewards must be a list of mappings, each with a `type`"])
    out, problems = [], []
    for i, item in enumerate(items):
        if isinstance(item, _RewardBase):
            out.append(item)
            continue
        if not isinstance(item, dict):
            problems.append(f"reward {i + 1} must be a mapping with a `type`, got {item!r}")
            continue
        kind = item.get("type")
        cls = REWARD_TYPES.get(kind)
        if cls is None:
            close = difflib.get_close_matches(str(kind), list(REWARD_TYPES), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            problems.append(f"reward {i + 1}: unknown type {kind!r}{hint}; types: {', '.join(REWARD_TYPES)}")
            continue
        try:
            out.append(cls.model_validate(item))
        except ValidationError as err:  # one line per problem
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"])
                msg = str(e["msg"]).removeprefix("Value error, ")
                problems.append(f"reward {i + 1} ({kind}){' `' + where + '`' if where else ''}: {msg}")
    if problems:
        raise RewardSpecError(problems)
    return out


# --------------------------------------------------------------------------- text helpers

_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")


def completion_text(completion: Any) -> str:
    """TRL passes text, or a list of messages for conversational prompts: return the reply text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return "" if completion is None else str(completion)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def after_think(text: str, tag: str = "think") -> str:
    end = text.rfind(f"</{tag}>")
    return text[end + len(tag) + 3:] if end >= 0 else text


def extract_answer(text: str, how: str) -> str | None:
    """The answer part of a completion (or of a reference column); None when `how` finds nothing."""
    text = text or ""
    if how == "full":
        return text.strip()
    if how == "boxed":
        return _boxed(text)
    if how == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1].strip() if numbers else None
    if how == "last_line":
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else None
    if how == "after_think":
        return after_think(text).strip()
    if how.startswith("after:"):
        marker = how[len("after:"):]
        at = text.rfind(marker)
        rest = text[at + len(marker):].strip() if at >= 0 else ""
        return rest.splitlines()[0].strip() if rest else None
    if how.startswith("regex:"):
        found = re.findall(how[len("regex:"):], text, flags=re.DOTALL)
        if not found:
            return None
        last = found[-1]
        return (last[0] if isinstance(last, tuple) else last).strip()
    marked = _marked_answer(text)
    return marked if marked is not None else after_think(text).strip()


def _marked_answer(text: str) -> str | None:
    """An answer the text marks explicitly: \\boxed{x}, "#### x", "answer: x" / "the answer is x"."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        tail = text[text.rfind("####") + 4:].strip()
        if tail:
            return tail.splitlines()[0].strip()
    marker = list(re.finditer(r"answer\s*(?:is|:)\s*(.+)", text, flags=re.IGNORECASE))
    if marker:
        return marker[-1].group(1).strip()
    return None


def parse_number(text: str | None) -> float | None:
    """The first number in `text` ("1,234", "$5", "-2.5", "3/4", "1e3"), or None."""
    if text is None:
        return None
    match = _NUMBER.search(str(text))
    if not match:
        return None
    raw = match.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in raw:
            num, den = raw.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(raw)
    except ValueError:
        return None


def _normalise(text: str, case_sensitive: bool) -> str:
    text = " ".join(str(text).split()).strip().rstrip(".").strip()
    return text if case_sensitive else text.lower()


# --------------------------------------------------------------------------- built-in scores (one completion)


def score_exact_match(spec: ExactMatchReward, text: str, target: Any) -> float:
    got = extract_answer(text, spec.extract)
    want = extract_answer(str(target), spec.target_extract) if not isinstance(target, (int, float)) else str(target)
    if got is None or want is None:
        return 0.0
    return float(_normalise(got, spec.case_sensitive) == _normalise(want, spec.case_sensitive))


def _number_in(text: str, how: str) -> float | None:
    if how == "auto":
        marked = _marked_answer(text)
        if marked is not None and parse_number(marked) is not None:
            return parse_number(marked)
        numbers = _NUMBER.findall(after_think(text))  # else the last number written
        return parse_number(numbers[-1]) if numbers else None
    return parse_number(extract_answer(text, how))


def score_numeric_match(spec: NumericMatchReward, text: str, target: Any) -> float:
    value = _number_in(text, spec.extract)
    if isinstance(target, bool) or target is None:
        want = None
    elif isinstance(target, (int, float)):
        want = float(target)
    else:
        want = _number_in(str(target), spec.target_extract)
    if value is None or want is None or not math.isfinite(value):
        return 0.0
    return float(abs(value - want) <= max(spec.tolerance, spec.relative_tolerance * abs(want)))


def score_regex(spec: RegexReward, text: str) -> float:
    flags = re.DOTALL | (re.IGNORECASE if spec.ignore_case else 0)
    found = (re.fullmatch if spec.fullmatch else re.search)(spec.pattern, text.strip() if spec.fullmatch else text,
                                                            flags=flags)
    return float(bool(found) == spec.must_match)


def score_format(spec: FormatReward, text: str, prompt: str = "") -> float:
    open_tag, close_tag = f"<{spec.think_tag}>", f"</{spec.think_tag}>"
    body = text.lstrip()
    if not body.startswith(open_tag) and prompt.rstrip().endswith(open_tag):
        body = open_tag + body  # the generation prompt already opened the think block
    pattern = rf"{re.escape(open_tag)}(.*?){re.escape(close_tag)}\s*(\S.*)"
    match = re.fullmatch(pattern, body.strip(), flags=re.DOTALL)
    if not match or not match.group(1).strip() or open_tag in match.group(2) or close_tag in match.group(2):
        return 0.0
    if spec.answer_pattern is not None and not re.search(spec.answer_pattern, match.group(2), flags=re.DOTALL):
        return 0.0
    return 1.0


def score_length(spec: LengthReward, length: int) -> float:
    if spec.mode == "overlong":
        start = spec.max_length - spec.buffer
        if length <= start:
            return 0.0
        if length >= spec.max_length:
            return -1.0
        return -(length - start) / spec.buffer
    below = (spec.min_length - length) if spec.min_length is not None and length < spec.min_length else 0
    above = (length - spec.max_length) if spec.max_length is not None and length > spec.max_length else 0
    distance = max(below, above)
    if distance == 0:
        return 1.0
    if spec.buffer == 0:
        return 0.0
    return max(0.0, 1.0 - distance / spec.buffer)


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def fenced_block(text: str, languages: tuple[str, ...]) -> str | None:
    """The last ``` block in one of `languages` (or unlabelled), else None."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for lang, body in reversed(blocks):
        if lang in languages or lang == "":
            return body
    return None


def score_json_valid(spec: JsonValidReward, text: str) -> float:
    body = fenced_block(text, ("json",))
    candidate = body if body is not None else after_think(text).strip()
    try:
        value = json.loads(candidate)
    except (ValueError, TypeError):
        return 0.0
    if spec.required_keys:
        return float(isinstance(value, dict) and all(k in value for k in spec.required_keys))
    return 1.0


def _length_of(spec: LengthReward, text: str, ids: list[int] | None) -> int:
    if spec.unit == "tokens":
        return len(ids) if ids is not None else len(text.split())
    if spec.unit == "words":
        return len(text.split())
    return len(text)


# --------------------------------------------------------------------------- TRL callables

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
        from ftcli import sandbox

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
        return Reward(name, spec, lambda t, p, i, target: score_length(spec, _length_of(spec, t, i)))
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
        if spec.type == "code_tests" and first_row is not None:
            from ftcli import sandbox

            try:
                sandbox.normalise_tests(first_row.get(spec.column))
            except ValueError as err:
                raise BadInput(f"{where}: column {spec.column!r} of the first row: {err}") from None
        if spec.type == "function":
            rewards.append(_user_function(spec, name, where, columns))
        else:
            rewards.append(_builtin(spec, name))
    return rewards


def weights(specs: list) -> list[float]:
    return [float(spec.weight) for spec in specs]
