"""code_tests cases: what is split off to stay outside the sandbox, the value codec, and scores equal to plain exec."""

import collections
import json

import pytest

from ftcli.rewards import cases, sandbox
from ftcli.rewards.sandbox_child import Unsupported, decode, encode
from helpers.sandbox import needs_sandbox



@pytest.mark.parametrize("source, calls, expected", [
    ("assert f(1) == 3", ["f(1)"], [3]),
    ("assert (1, 2) == f(x=[1])", ["f(x=[1])"], [(1, 2)]),
    ("assert f('a') == {'a': {1, 2}}\nassert g() == -1.5", ["f('a')", "g()"], [{"a": {1, 2}}, -1.5]),
    ("assert f(1) == None, 'message'", ["f(1)"], [None]),
])
def test_asserts_against_a_literal_are_split_and_the_literal_stays_outside(source, calls, expected):
    assert cases.split_assert(source) == (calls, expected)
    plan = cases.plan([{"kind": "assert", "code": source}])
    assert plan.job_asserts == [{"values": calls}] and plan.expected_values == [expected]


@pytest.mark.parametrize("source", [
    "assert f(1) > 2", "x = f(1)\nassert x == 3", "assert f(1) == g(2)", "assert f(1) == 3 == 3",
    "assert abs(f(0.1) - 0.3) < 1e-9", "def check(c):\n    assert c(1) == 2\ncheck(f)", "assert f(1) == [g(0)]",
    "this is not python",
])
def test_other_cases_are_unsplittable_and_run_whole(source):
    assert cases.split_assert(source) is None
    assert cases.plan([{"kind": "assert", "code": source}]).job_asserts == [{"check": source}]


def test_io_cases_send_only_the_input():
    plan = cases.plan([{"kind": "io", "input": "1 2", "output": "3"}])
    assert plan.job_io == ["1 2"] and plan.expected_io == ["3"] and plan.total == 1


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2 ** 80, 1.5, float("inf"), -0.0, "text ✓", b"\x00\xff", bytearray(b"ab"), 1 + 2j,
    [1, [2, (3,)]], (1, 2), (), {1, 2}, frozenset({"a"}), {"a": 1, 2: [3], (4, 5): None}, Point(1, 2),
    collections.OrderedDict(a=1), collections.Counter("aab"),
])
def test_the_codec_keeps_what_equality_tells_apart(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value
    assert type(back) in (type(value), tuple, dict) if isinstance(value, (tuple, dict)) else type(back) is type(value)


def test_the_codec_refuses_objects_that_could_claim_any_equality():
    class Anything:
        def __eq__(self, other):
            return True

    for value in (Anything(), [1, Anything()], {"k": Anything()}, iter([1]), print):
        with pytest.raises(Unsupported):
            encode(value)
    for data in ({"eval": "1"}, {"list": 1, "tuple": []}, [1, 2]):
        with pytest.raises(ValueError):
            decode(data)
    assert decode({"list": [1]}) != (1,) and decode({"tuple": [1]}) == (1,)


def reference_passed(code: str, tests: list[str]) -> int:
    """What the old in-process harness counted: run the program, then each case in its namespace."""
    ns = {"__name__": "__main__"}
    exec(compile(code, "<completion>", "exec"), ns)
    passed = 0
    for case in tests:
        try:
            exec(compile(case, "<test>", "exec"), ns)
            passed += 1
        except Exception:
            pass
    return passed


BENIGN = {
    "tuples and lists": ("def f(n):\n    return tuple(range(n))",
                         ["assert f(2) == (0, 1)", "assert f(2) == [0, 1]", "assert f(0) == ()"]),
    "floats": ("def f(x):\n    return x * 3", ["assert f(0.1) == 0.30000000000000004", "assert f(0.1) == 0.3",
                                               "assert abs(f(0.1) - 0.3) < 1e-9", "assert f(2) == 6.0"]),
    "containers": ("def f(s):\n    return {c: s.count(c) for c in set(s)}",
                   ["assert f('aab') == {'a': 2, 'b': 1}", "assert set(f('ab')) == {'a', 'b'}",
                    "assert f('') == {}", "assert f('a') == {'a': 2}"]),
    "bool and None": ("def f(x):\n    return x > 0 or None",
                      ["assert f(1) == True", "assert f(1) == 1", "assert f(-1) == None", "assert f(-1) == False"]),
    "bytes and sets": ("def f(x):\n    return x.encode(), frozenset(x)",
                       ["assert f('ab') == (b'ab', frozenset('ab'))", "assert f('a')[0] == 'a'"]),
    "shared state": ("calls = []\ndef f(x):\n    calls.append(x)\n    return len(calls)",
                     ["assert f(0) == 1", "assert f(0) == 2", "y = f(0)\nassert y == 3"]),
    "humaneval style": ("def f(x):\n    return x + 1",
                        ["def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\ncheck(f)",
                         "def check(candidate):\n    assert candidate(1) == 3\ncheck(f)"]),
    "raises": ("def f(x):\n    return 1 // x", ["assert f(1) == 1", "assert f(0) == 0"]),
    "namedtuple": ("import collections\nP = collections.namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)",
                   ["assert f() == (1, 2)", "assert f().x == 1"]),
}


@needs_sandbox
def test_benign_solutions_score_exactly_as_in_process():
    names = list(BENIGN)
    results = sandbox.run_many([BENIGN[name] for name in names])
    got = {name: (r.status, r.passed, r.total) for name, r in zip(names, results)}
    want = {name: ("ok", reference_passed(*BENIGN[name]), len(BENIGN[name][1])) for name in names}
    assert got == want
    assert 0 < sum(p for _, p, _ in got.values()) < sum(t for _, _, t in got.values())  # both passes and fails
