"""The test cases of `code_tests`: read them from a dataset cell, split what the sandbox may see, judge its answer.

Test cases, from a dataset column, may be:
  - a string of Python (asserts) or a list of such strings: each string is one case, run after the
    program in the same namespace;
  - a list of {"input": ..., "output": ...} (or {"inputs": [...], "outputs": [...]}, as APPS stores
    them, possibly as a JSON string): the program reads stdin and must print the output.

The expected answers stay here. A case made only of `assert <call> == <literal>` statements sends the
sandbox just `<call>`; the value comes back as plain data and is compared with the literal outside.
An io case sends only the input. Any other assert case ("unsplittable") runs whole inside the sandbox
and its verdict is the sandbox's word (docs/security.md says what that can and cannot prevent).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

from ftcli.rewards.sandbox_child import decode


@dataclass
class Plan:
    """What the sandbox gets (`job`), and what stays with the trainer to judge its answer."""

    job_asserts: list[dict] = field(default_factory=list)
    job_io: list[str] = field(default_factory=list)
    expected_values: list[list | None] = field(default_factory=list)  # None: an unsplittable case
    expected_io: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.job_asserts) + len(self.job_io)


def normalise_tests(value) -> list[dict]:
    """Dataset test cases -> [{"kind": "assert", "code"}] / [{"kind": "io", "input", "output"}]."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("the test cases are an empty string")
        return [{"kind": "assert", "code": value}]
    if isinstance(value, dict) and ("inputs" in value or "input_output" in value):
        value = value.get("input_output", value)
        if isinstance(value, str):
            value = json.loads(value)
        ins, outs = value.get("inputs"), value.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ValueError("`inputs` and `outputs` must be lists of the same length")
        return [{"kind": "io", "input": _text(i), "output": _text(o)} for i, o in zip(ins, outs)]
    if isinstance(value, list) and value:
        cases = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                cases.append({"kind": "assert", "code": item})
            elif isinstance(item, dict) and "input" in item and "output" in item:
                cases.append({"kind": "io", "input": _text(item["input"]), "output": _text(item["output"])})
            else:
                raise ValueError(f"test case {i} must be a string of Python or a mapping with input and output, "
                                 f"got {type(item).__name__}")
        return cases
    raise ValueError("test cases must be a string of Python asserts, a list of them, or a list of "
                     f"{{input, output}} mappings; got {type(value).__name__}")


def _text(value) -> str:
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return str(value)


_NOT_LITERAL = object()


def _literal(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def split_assert(source: str) -> tuple[list[str], list] | None:
    """`assert f(x) == 3` (one or more such statements) -> (["f(x)"], [3]); None when the case cannot be split."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    calls, expected = [], []
    for stmt in tree.body:
        test = stmt.test if isinstance(stmt, ast.Assert) else None
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            return None
        left, right = test.left, test.comparators[0]
        want = _literal(right)
        if want is _NOT_LITERAL:
            left, right = right, left
            want = _literal(right)
        if want is _NOT_LITERAL:
            return None
        calls.append(ast.unparse(left))
        expected.append(want)
    return (calls, expected) if calls else None


def plan(cases: list[dict]) -> Plan:
    """Split the cases into the sandbox's job and the expected answers kept outside."""
    out = Plan()
    for case in cases:
        if case["kind"] == "io":
            out.job_io.append(case["input"])
            out.expected_io.append(case["output"])
            continue
        split = split_assert(case["code"])
        if split is None:
            out.job_asserts.append({"check": case["code"]})
            out.expected_values.append(None)
        else:
            out.job_asserts.append({"values": split[0]})
            out.expected_values.append(split[1])
    return out


def same_output(got: str, want: str) -> bool:
    return [line.rstrip() for line in got.strip().splitlines()] == [line.rstrip() for line in want.strip().splitlines()]


def _equal(encoded: list, expected: list) -> bool:
    try:
        values = [decode(v) for v in encoded]
        return len(values) == len(expected) and all(got == want for got, want in zip(values, expected))
    except Exception:  # malformed data from the sandbox, unhashable keys: the case fails
        return False


def passed(p: Plan, report: dict) -> int:
    """How many cases the sandbox's report passes, judged against the expected answers held here."""
    count = 0
    answers = report.get("asserts")
    if isinstance(answers, list) and len(answers) == len(p.expected_values):
        for answer, expected in zip(answers, p.expected_values):
            if not isinstance(answer, dict):
                continue
            if expected is None:
                count += answer.get("passed") is True
            elif isinstance(answer.get("values"), list):
                count += _equal(answer["values"], expected)
    outputs = report.get("io")
    if isinstance(outputs, list) and len(outputs) == len(p.expected_io):
        for answer, want in zip(outputs, p.expected_io):
            if isinstance(answer, dict) and answer.get("ok") is True and isinstance(answer.get("stdout"), str):
                count += same_output(answer["stdout"], want)
    return count
