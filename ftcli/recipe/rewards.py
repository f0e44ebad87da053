"""The reward declarations of `train.grpo.rewards`: one pydantic model per reward type."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator



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
