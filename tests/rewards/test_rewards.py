"""GRPO rewards: every built-in on hand-made completions, validation of bad declarations, the code sandbox."""

import sys
import textwrap
import time
import uuid

import pytest

from ftcli import recipe
from ftcli import rewards
from ftcli.rewards import sandbox
from ftcli.errors import BadInput, RecipeError
from helpers.runs import write_recipe
from helpers.sandbox import needs_sandbox


def make(**spec):
    return rewards.parse_specs([spec])[0]


def score(spec: dict, completions, columns=None, prompts=None, ids=None, dataset_columns=None):
    [fn] = rewards.build([make(**spec)], dataset_columns or list(columns or {}))
    return fn(prompts=prompts or [""] * len(completions), completions=completions,
              completion_ids=ids, **(columns or {}))


# --------------------------------------------------------------------------- built-ins


def test_numeric_match_extracts_answers_and_honours_tolerance():
    completions = [
        "<think>12 - 5 = 7, 7 + 8 = 15</think> 15",           # after the think block
        "Step: 3 + 4 = 7. The answer is 15.",                 # 'answer is' beats the last number
        "so \\boxed{1,500} apples",                            # boxed, thousands separator
        "I think it is 14",                                     # wrong
        "#### 15.0000001",                                      # GSM8K marker, within tolerance
        "no number here",
        [{"role": "assistant", "content": "15"}],              # conversational completion
    ]
    answers = ["15", "15", "1500", "15", "15", "15", "Tom ends with #### 15"]
    got = score({"type": "numeric_match", "column": "answer", "tolerance": 1e-6}, completions, {"answer": answers})
    assert got == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    strict = score({"type": "numeric_match", "tolerance": 0.0}, ["#### 15.01"], {"answer": [15]})
    loose = score({"type": "numeric_match", "relative_tolerance": 0.01}, ["#### 15.01"], {"answer": [15]})
    assert strict == [0.0] and loose == [1.0]
    assert rewards.parse_number("-3/4") == -0.75 and rewards.parse_number("$1,234.5") == 1234.5


def test_exact_match_normalises_case_space_and_trailing_period():
    spec = {"type": "exact_match", "column": "label"}
    got = score(spec, ["Answer: Paris.", "answer:  paris", "<think>hmm</think>  PARIS ", "Lyon", "\\boxed{Paris}"],
                {"label": ["Paris"] * 5})
    assert got == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert score({**spec, "case_sensitive": True}, ["Answer: paris"], {"label": ["Paris"]}) == [0.0]
    assert score({**spec, "extract": "after:=>"}, ["x => Paris"], {"label": ["Paris"]}) == [1.0]
    assert score({**spec, "extract": "regex:FINAL\\((\\w+)\\)"}, ["FINAL(Paris) ok"], {"label": ["Paris"]}) == [1.0]


def test_regex_must_and_must_not_match():
    texts = ["I am sure.", "I'm not sure, sorry", "SURE"]
    assert score({"type": "regex", "pattern": r"\bsure\b"}, texts) == [1.0, 1.0, 0.0]
    assert score({"type": "regex", "pattern": r"\bsure\b", "ignore_case": True}, texts) == [1.0, 1.0, 1.0]
    assert score({"type": "regex", "pattern": "sorry", "must_match": False}, texts) == [1.0, 0.0, 1.0]
    assert score({"type": "regex", "pattern": r"[A-Z]+", "fullmatch": True}, texts) == [0.0, 0.0, 1.0]


def test_format_wants_think_then_an_answer():
    spec = {"type": "format"}
    texts = ["<think>2+2 is 4</think>\n4", "<think>2+2 is 4</think>", "4", "<think></think> 4",
             "<think>a</think> 4 <think>b</think> 5", " <think>ok</think>  The answer is 4."]
    assert score(spec, texts) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # a generation prompt that already opened the think block
    assert score(spec, ["reasoning</think> 4"], prompts=["<|im_start|>assistant\n<think>\n"]) == [1.0]
    assert score({**spec, "answer_pattern": r"^\s*-?\d+\s*$"}, ["<think>x</think> 4", "<think>x</think> four"]) \
        == [1.0, 0.0]


def test_length_range_and_overlong_penalty():
    ids = [[1] * n for n in (5, 10, 20, 30, 40)]
    texts = ["x"] * 5
    hard = score({"type": "length", "min_length": 10, "max_length": 20}, texts, ids=ids)
    soft = score({"type": "length", "min_length": 10, "max_length": 20, "buffer": 10}, texts, ids=ids)
    assert hard == [0.0, 1.0, 1.0, 0.0, 0.0] and soft == [0.5, 1.0, 1.0, 0.0, 0.0]
    over = score({"type": "length", "mode": "overlong", "max_length": 40, "buffer": 20}, texts, ids=ids)
    assert over == [0.0, 0.0, 0.0, -0.5, -1.0]
    chars = score({"type": "length", "unit": "chars", "max_length": 3}, ["abc", "abcd"])
    assert chars == [1.0, 0.0]


def test_json_valid_with_fences_and_required_keys():
    texts = ['{"a": 1, "b": 2}', '```json\n{"a": 1}\n```', "<think>plan</think> [1, 2]", "{'a': 1}", "nope"]
    assert score({"type": "json_valid"}, texts) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert score({"type": "json_valid", "required_keys": ["a", "b"]}, texts) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_user_functions_batch_and_per_completion_get_their_columns(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def batch(completions, answer, **kwargs):
            return [float(c.strip() == a) for c, a in zip(completions, answer)]

        def single(completion, answer, bonus=0.0):
            return float(answer in completion) + bonus

        def with_prompt(prompt, completion):
            return float(prompt.upper() == completion)
    """))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_rewards", None)
    cols = {"answer": ["4", "5"]}
    assert score({"type": "function", "function": "my_rewards:batch"}, ["4", "4"], cols) == [1.0, 0.0]
    assert score({"type": "function", "function": "my_rewards:single", "kwargs": {"bonus": 0.5}},
                 ["it is 4", "it is 4"], cols) == [1.5, 0.5]
    assert score({"type": "function", "function": "my_rewards:with_prompt"}, ["HI", "no"], prompts=["hi", "hi"]) \
        == [1.0, 0.0]


def test_each_reward_is_named_for_its_own_log_line():
    specs = rewards.parse_specs([{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"},
                                 {"type": "format", "name": "thinking"}])
    names = [fn.__name__ for fn in rewards.build(specs, [])]
    assert names == ["regex", "regex_2", "thinking"]  # TRL logs rewards/<name>/mean for each


# --------------------------------------------------------------------------- validation


def problems_of(tmp_path, reward_list, dataset=None):
    path = write_recipe(tmp_path / "r.yaml", train={"stage": "grpo", "per_device_train_batch_size": 4,
                                                    "grpo": {"num_generations": 4, "rewards": reward_list}},
                        dataset=dataset or {"path": "d.jsonl", "format": "prompt"})
    with pytest.raises(RecipeError) as info:
        recipe.load(path)
    return "\n".join(info.value.problems)


@pytest.mark.parametrize("reward, expected", [
    ({"type": "numric_match"}, "unknown type 'numric_match' (did you mean `numeric_match`?)"),
    ({"type": "numeric_match", "tolerence": 1}, "unknown key `tolerence` (did you mean `tolerance`?)"),
    ({"type": "regex", "pattern": "(unclosed"}, "does not compile"),
    ({"type": "regex"}, "reward 1 (regex) `pattern`: Field required"),
    ({"type": "function", "function": "no_colon"}, 'write it as "package.module:function"'),
    ({"type": "length"}, "needs min_length, max_length or both"),
    ({"type": "length", "mode": "overlong", "max_length": 10}, "buffer > 0"),
    ({"type": "exact_match", "extract": "psychic"}, "unknown extract 'psychic'"),
    ("just a string", "must be a mapping with a `type`"),
])
def test_bad_declarations_fail_in_the_recipe_with_file_line_and_entry(tmp_path, reward, expected):
    text = problems_of(tmp_path, [{"type": "format"}, reward])
    assert expected.replace("reward 1", "reward 2") in text
    assert "r.yaml:" in text and "train.grpo.rewards: reward 2" in text


def test_grpo_without_rewards_is_refused(tmp_path):
    assert "GRPO needs at least one reward" in problems_of(tmp_path, [])


def test_build_checks_columns_imports_and_signatures(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(textwrap.dedent("""
        def no_completion(prompts, answer):
            return [0.0] * len(prompts)

        def needs_missing(completions, difficulty):
            return [0.0] * len(completions)

        def ok(completions, **kwargs):
            return [1.0] * len(completions)

        NOT_CALLABLE = 3
    """))
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    for name in ("bad_rewards", "broken_module"):
        sys.modules.pop(name, None)
    columns = ["answer"]

    def fails(spec, *fragments):
        with pytest.raises(BadInput) as info:
            rewards.build([make(**spec)], columns)
        text = info.value.message + " " + (info.value.hint or "")
        for fragment in fragments:
            assert fragment in text, text
        assert "train.grpo.rewards: reward 1" in text

    fails({"type": "numeric_match", "column": "answr"}, "column 'answr'", "columns: answer", "column: answer")
    fails({"type": "code_tests"}, "column 'tests'")
    fails({"type": "function", "function": "no_such_module:fn"}, "cannot import module 'no_such_module'")
    fails({"type": "function", "function": "broken_module:fn"}, "RuntimeError: boom at import")
    fails({"type": "function", "function": "bad_rewards:okk"}, "has no function 'okk'", "bad_rewards:ok")
    fails({"type": "function", "function": "bad_rewards:NOT_CALLABLE"}, "not a function")
    fails({"type": "function", "function": "bad_rewards:no_completion"}, "`completions`", "`completion`")
    fails({"type": "function", "function": "bad_rewards:needs_missing"}, "needs 'difficulty'", "dataset column")
    fails({"type": "function", "function": "bad_rewards:needs_missing", "kwargs": {"difficulty": 1, "x": 2}},
          "kwargs ['x'] are not parameters")
    assert rewards.build([make(type="function", function="bad_rewards:ok")], columns)[0].__name__ == "function"


# --------------------------------------------------------------------------- code_tests sandbox

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def code(body: str) -> str:
    return f"Here you go:\n```python\n{textwrap.dedent(body)}\n```"


@needs_sandbox
def test_code_tests_scores_passing_cases_and_reads_io_tests():
    spec = {"type": "code_tests", "column": "tests", "timeout": 5}
    good = code("def add(a, b):\n    return a + b")
    off_by_one = code("def add(a, b):\n    return a + b + (a == 2)")
    got = score(spec, [good, off_by_one, "no code at all"], {"tests": [ADD_TESTS] * 3})
    assert got[0] == 1.0 and got[1] == pytest.approx(2 / 3) and got[2] == 0.0
    strict = score({**spec, "partial_credit": False}, [off_by_one], {"tests": [ADD_TESTS]})
    assert strict == [0.0]
    io = [{"input": "1 2", "output": "3"}, {"input": "5 5", "output": "10"}]
    echo = code("a, b = map(int, input().split())\nprint(a + b)")
    assert score(spec, [echo], {"tests": [io]}) == [1.0]
    apps = '{"inputs": ["4 4\\n"], "outputs": ["8\\n"]}'
    assert score(spec, [echo], {"tests": [apps]}) == [1.0]


@needs_sandbox
def test_code_tests_contain_infinite_loop_memory_bomb_and_file_writes(tmp_path):
    target = tmp_path / f"pwned-{uuid.uuid4().hex}"
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    add = "\ndef add(a, b):\n    return a + b"
    failing = {  # each of these stops the program before `add` exists, or hangs: score 0
        "infinite loop": "def add(a, b):\n    while True:\n        pass\nadd(1, 2)",
        "memory bomb": "blob = bytearray(8 * 1024 ** 3)" + add,
        "list bomb": "xs = [0] * (10 ** 10)" + add,
        "file write": f"open({str(target)!r}, 'w').write('x')" + add,
        "os.open write": f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)" + add,
        "truncate": f"open({str(victim)!r}, 'w')" + add,
        "delete": f"import os\nos.remove({str(victim)!r})" + add,
        "output flood": "print('x' * 10 ** 8)" + add,
    }
    # A shell or a subprocess may run, but only inside the sandbox: the host's files stay as they were.
    contained = {
        "shell": f"import os\nos.system('touch {target}; rm -f {victim}')" + add,
        "subprocess": f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])" + add,
    }
    started = time.time()
    jobs = [(src, ADD_TESTS) for src in [*failing.values(), *contained.values()]]
    results = sandbox.run_many(jobs, timeout=2.0, memory_mb=256)
    elapsed = time.time() - started
    scores = {name: r.score() for name, r in zip(failing, results)}
    assert all(s == 0.0 for s in scores.values()), scores
    assert not target.exists() and victim.read_text() == "precious"
    assert results[0].status == "timeout" and elapsed < 30
    # the training process itself is untouched and a good program still passes afterwards
    assert sandbox.run("def add(a, b):\n    return a + b", ADD_TESTS).score() == 1.0


@needs_sandbox
def test_code_tests_validation_reads_the_first_row():
    spec = make(type="code_tests")
    with pytest.raises(BadInput, match="test cases must be"):
        rewards.build([spec], ["tests"], first_row={"tests": 42})
    assert rewards.build([spec], ["tests"], first_row={"tests": ADD_TESTS})
