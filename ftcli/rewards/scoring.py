"""Answer extraction and the built-in scores of one completion (pure functions)."""

from __future__ import annotations

import json
import math
import re
from typing import Any


from ftcli.recipe.rewards import ExactMatchReward, FormatReward, JsonValidReward, LengthReward, NumericMatchReward, RegexReward


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


def length_of(spec: LengthReward, text: str, ids: list[int] | None) -> int:
    if spec.unit == "tokens":
        return len(ids) if ids is not None else len(text.split())
    if spec.unit == "words":
        return len(text.split())
    return len(text)
