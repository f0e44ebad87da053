"""The fuzz cases: bad recipes, datasets, CLI arguments, templates and signals, as a new user or an attacker
would give them. Each case says what to write, what to run, the exit code and what the message must name.

Placeholders in `args` and `names`: {recipe} {data} {prev} {tmp} {template}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@dataclass
class Case:
    id: str
    args: list[str]
    rc: int
    names: list[str]  # every one must appear in the output
    recipe: dict | str | bytes | None = None  # merged over the base recipe (dict) or the whole file (text)
    data: bytes | list | None = None  # dataset lines (list of rows or raw lines) or bytes
    data_name: str = "d.jsonl"
    template: str | bytes | None = None  # written to {template}, and the recipe's template.name points at it
    patch: str | None = None  # a name in test_fuzz.PATCHES, applied before the run
    kind: str = "recipe"


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")])
BASE_TEXT = "model: {name: builtin:tiny-llama3}\ndataset: {path: {data}}\noutput_dir: {prev}\n"

# (id, recipe, names): each runs twice, through `validate` and through `train --overwrite`.
RECIPES = [
    ("typo-key", {"train": {"learnin_rate": 1}}, ["{recipe}:", "did you mean `learning_rate`"]),
    ("typo-section", {"trian": {"lr": 1}}, ["{recipe}:", "unknown key `trian`", "`train`"]),
    ("top-level-field", {"learning_rate": 1e-4}, ["{recipe}:", "did you mean `train.learning_rate`"]),
    ("yaml-syntax", "model:\n  name: [unclosed\ndataset: {path: x}\n", ["{recipe}:", "YAML syntax error"]),
    ("yaml-tab", "model:\n\tname: x\n", ["{recipe}:2:", "YAML syntax error"]),
    ("not-a-mapping", "- model\n- dataset\n", ["{recipe}", "must be a mapping"]),
    ("scalar-file", "hello\n", ["{recipe}", "must be a mapping"]),
    ("empty-file", "", ["{recipe}", "`model` is required"]),
    ("alias-bomb", BOMB + "\n" + BASE_TEXT, ["{recipe}:", "more than 100,000 values"]),
    ("recursive-alias", BASE_TEXT + "x: &x [1, *x]\n", ["{recipe}:4:", "contains itself"]),
    ("recursive-map", "model: &m {name: x, m: *m}\ndataset: {path: d}\n", ["{recipe}:1:", "contains itself"]),
    ("deep-nesting", BASE_TEXT + "x: " + "[" * 100 + "]" * 100 + "\n", ["{recipe}:", "nests more than 64"]),
    ("duplicate-key", "model:\n  name: a\n  name: b\ndataset: {path: d}\n", ["{recipe}:3:", "line 2 and on line 3"]),
    ("duplicate-section", BASE_TEXT + "model: {name: b}\n", ["{recipe}:4:", "on line 1 and on line 4"]),
    ("list-key", BASE_TEXT + "[a, b]: 1\n", ["{recipe}:4:", "a key must be a plain name"]),
    ("bool-steps", BASE_TEXT + "train: {max_steps: yes}\n", ["{recipe}:4", "`train.max_steps`", "not a boolean"]),
    ("bool-lr", "model: {name: x}\ndataset: {path: d}\ntrain: {lr: on}\n", ["{recipe}:3", "not a boolean"]),
    ("bool-rank", {"lora": {"r": True}}, ["{recipe}:", "`lora.r`", "not a boolean"]),
    ("bool-seq", {"model": {"max_seq_length": False}}, ["{recipe}:", "`model.max_seq_length`"]),
    ("lr-text", {"train": {"learning_rate": "fast"}}, ["{recipe}:", "`train.learning_rate`"]),
    ("lr-negative", {"train": {"learning_rate": -1}}, ["{recipe}:", "`train.learning_rate`", "greater than 0"]),
    ("lr-nan", "model: {name: x}\ndataset: {path: d}\ntrain: {lr: .nan}\n", ["{recipe}:3", "`train.learning_rate`"]),
    ("batch-zero", {"train": {"per_device_train_batch_size": 0}}, ["`train.per_device_train_batch_size`"]),
    ("steps-zero", {"train": {"max_steps": 0}}, ["train.max_steps", "positive number of steps"]),
    ("seed-text", {"train": {"seed": "abc"}}, ["{recipe}:", "`train.seed`"]),
    ("scheduler", {"train": {"lr_scheduler_type": "cosin"}}, ["{recipe}:", "unknown scheduler 'cosin'"]),
    ("optimizer", {"train": {"optim": "adam_torch"}}, ["{recipe}:", "did you mean adamw_torch"]),
    ("stage", {"train": {"stage": "ppo"}}, ["{recipe}:", "`train.stage`"]),
    ("dtype", {"model": {"dtype": "float8"}}, ["{recipe}:", "`model.dtype`"]),
    ("model-list", {"model": {"name": ["a", "b"]}}, ["{recipe}:", "`model.name`"]),
    ("no-model-name", "model: {max_seq_length: 64}\ndataset: {path: d}\n", ["`model.name` is required"]),
    ("no-dataset", "model: {name: x}\n", ["{recipe}", "`dataset` is required"]),
    ("lora-rank-zero", {"lora": {"r": 0}}, ["{recipe}:", "`lora.r`"]),
    ("lora-targets-int", {"lora": {"target_modules": 5}}, ["{recipe}:", "lora.target_modules"]),
    ("eval-fraction", {"dataset": {"eval_fraction": 1.5}}, ["{recipe}:", "`dataset.eval_fraction`"]),
    ("columns-text", {"dataset": {"columns": "prompt"}}, ["{recipe}:", "`dataset.columns`"]),
    ("seq-inf", "model: {name: x, max_seq_length: .inf}\ndataset: {path: d}\n", ["{recipe}:1", "max_seq_length"]),
    ("output-placeholder", {"output_dir": "{tmp}/runs/{bogus}"}, ["output_dir", "{bogus}"]),
    ("template-family", {"template": {"name": "llama9"}}, ["template.name", "unknown chat template family 'llama9'"]),
    ("template-missing", {"template": {"name": "{tmp}/none.jinja"}}, ["template.name", "{tmp}/none.jinja"]),
    ("format-vs-stage", {"dataset": {"format": "preference"}}, ["dataset.format", "does not fit train.stage"]),
    ("grpo-no-reward", {"train": {"stage": "grpo"}, "dataset": {"format": "prompt"}}, ["train.grpo", "reward"]),
    ("grpo-bad-reward", {"train": {"stage": "grpo", "per_device_train_batch_size": 8,
                                   "grpo": {"rewards": [{"type": "telepathy"}]}},
                         "dataset": {"format": "prompt"}}, ["train.grpo.rewards", "telepathy"]),
    ("qlora-no-lora", {"model": {"load_in_4bit": True}, "lora": None}, ["model.load_in_4bit", "`lora:`"]),
    ("alias-twice", BASE_TEXT + "train:\n  lr: 1.0e-3\n  learning_rate: 2.0e-3\n",
     ["{recipe}:6:", "`train.learning_rate`", "`train.lr` (line 5)", "same setting"]),
    ("kernel-ops", {"train": {"kernels": ["warp_drive"]}}, ["{recipe}:", "unknown kernel ops"]),
    ("dpo-loss", {"train": {"dpo": {"loss_type": "sigmod"}}}, ["{recipe}:", "did you mean sigmoid"]),
    ("non-utf8", b"model: {name: x}\ndataset: {path: \xff}\n", ["{recipe}:2:", "not UTF-8"]),
]

# (id, --set items, names): through `train --overwrite`.
SETS = [
    ("set-top-level", ["learning_rate=1"], ["--set learning_rate=1", "did you mean `train.learning_rate`"]),
    ("set-deep-unknown", ["train.nosuch.deep=1"], ["--set train.nosuch.deep=1", "unknown key `train.nosuch`"]),
    ("set-no-equals", ["train.lr"], ["--set 'train.lr'", "KEY.PATH=VALUE"]),
    ("set-empty-key", ["=1"], ["--set '=1'", "key path is empty"]),
    ("set-bad-yaml", ["train.lr=[1"], ["--set 'train.lr=[1'", "not valid YAML"]),
    ("set-bool", ["train.max_steps=yes"], ["--set train.max_steps=yes", "not a boolean"]),
    ("set-not-section", ["train.learning_rate.x=1"], ["`train.learning_rate` is not a section"]),
    ("set-typo", ["lora.rnk=4"], ["--set lora.rnk=4", "did you mean `r`"]),
    ("set-range", ["train.warmup=2"], ["--set train.warmup=2", "train.warmup_ratio"]),
]

BAD_ROLE = {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}
# (id, data (rows or bytes), file name, recipe changes, names): through `train --overwrite`.
DATASETS = [
    ("empty", b"", "d.jsonl", {}, ["{data}: the file is empty"]),
    ("blank-lines", b"\n  \n\n", "d.jsonl", {}, ["{data}: the file is empty"]),
    ("bad-json-line-51", jsonl(*[GOOD] * 50) + b'{"messages": [}\n', "d.jsonl", {}, ["{data}, line 51", "not valid JSON"]),
    ("truncated-json", jsonl(GOOD) + b'{"messages": [{"role": "user"', "d.jsonl", {}, ["{data}, line 2"]),
    ("non-utf8", jsonl(GOOD) + b'{"text": "caf\xe9"}\n', "d.jsonl", {}, ["{data}, line 2", "not UTF-8", "0xe9"]),
    ("latin1-file", b'{"text": "\xe9t\xe9"}\n', "d.jsonl", {}, ["{data}, line 1", "not UTF-8"]),
    ("row-list", jsonl(GOOD, [GOOD]), "d.jsonl", {}, ["{data}, line 2", "not a list"]),
    ("row-string", jsonl("hello"), "d.jsonl", {}, ["{data}, line 1", "not a string"]),
    ("row-number", b"42\n", "d.jsonl", {}, ["{data}, line 1", "not a number"]),
    ("row-null", b"null\n", "d.jsonl", {}, ["{data}, line 1", "not null"]),
    ("deep-json", b"[" * 100000 + b"]" * 100000 + b"\n", "d.jsonl", {}, ["{data}, line 1", "too deeply"]),
    ("messages-text", jsonl({"messages": "hi"}), "d.jsonl", {}, ["{data}, line 1", "non-empty list of messages"]),
    ("messages-empty", jsonl({"messages": []}), "d.jsonl", {}, ["{data}, line 1", "non-empty list"]),
    ("bad-role", jsonl(GOOD, GOOD, BAD_ROLE), "d.jsonl", {}, ["{data}, line 3", "role 'wizard'"]),
    ("content-int", jsonl({"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "x"}]}),
     "d.jsonl", {}, ["{data}, line 1", "content must be a string"]),
    ("no-assistant", jsonl({"messages": [{"role": "user", "content": "hi"}]}), "d.jsonl", {},
     ["{data}, line 1", "no assistant message"]),
    ("message-not-dict", jsonl({"messages": ["hi", "there"]}), "d.jsonl", {}, ["{data}, line 1", "not a mapping"]),
    ("unknown-columns", jsonl({"foo": 1}), "d.jsonl", {}, ["{data}", "could not tell the dataset format", "foo"]),
    ("alpaca-no-output", jsonl({"instruction": "x", "output": ""}), "d.jsonl", {}, ["{data}, line 1", "'output'"]),
    ("completion-null", jsonl({"prompt": "p", "completion": None}), "d.jsonl", {}, ["{data}, line 1", "'completion'"]),
    ("text-empty", jsonl({"text": "  "}), "d.jsonl", {}, ["{data}, line 1", "'text'"]),
    ("text-nan", b'{"text": NaN}\n', "d.jsonl", {}, ["{data}, line 1", "'text'"]),
    ("sharegpt-alien", jsonl({"conversations": [{"from": "alien", "value": "x"}]}), "d.jsonl", {},
     ["{data}, line 1", "role 'alien'"]),
    ("crlf-bad-line", jsonl(GOOD).replace(b"\n", b"\r\n") + b"{oops}\r\n", "d.jsonl", {}, ["{data}, line 2"]),
    ("bom-then-bad", b"\xef\xbb\xbf" + jsonl(GOOD, BAD_ROLE), "d.jsonl", {}, ["{data}, line 2", "role 'wizard'"]),
    ("missing-file", None, "nope.jsonl", {}, ["{data}: dataset file not found"]),
    ("unsupported-suffix", b"hello", "d.txt", {}, ["{data}: unsupported file type '.txt'"]),
    ("columns-missing", jsonl(GOOD), "d.jsonl", {"dataset": {"columns": {"prompt": "question"}}},
     ["{data}", "names columns that do not exist", "question"]),
    ("json-array-row", json.dumps([GOOD, "oops"]).encode(), "d.json", {}, ["{data}, row 2", "not a string"]),
    ("json-broken", b'[\n  {"text": "a"},\n  {"text": }\n]', "d.json", {}, ["{data}, line 3", "not valid JSON"]),
    ("json-scalar", b"3", "d.json", {}, ["{data}", "must be a list of objects"]),
    ("parquet-garbage", b"PAR1 not really", "d.parquet", {}, ["{data}", "could not read the dataset"]),
    ("csv-no-columns", b"a,b\n1,2\n", "d.csv", {}, ["{data}", "could not tell the dataset format"]),
    ("all-lines-skipped", b"[1]\n{\n", "d.jsonl", {"dataset": {"skip_invalid": True}},
     ["{data}: no rows; every line was skipped", "line 1"]),
    ("all-rows-invalid", jsonl({"messages": "x"}), "d.jsonl", {"dataset": {"skip_invalid": True}},
     ["{data}: no usable rows"]),
    ("eval-takes-all", jsonl(GOOD), "d.jsonl", {"dataset": {"eval_fraction": 0.9}},
     ["dataset.eval_fraction", "leaves no training rows"]),
    ("dpo-no-rejected", jsonl({"prompt": "p", "chosen": "c"}), "d.jsonl",
     {"train": {"stage": "dpo"}, "dataset": {"format": "preference"}}, ["{data}, line 1", "`rejected`"]),
    ("grpo-no-prompt", jsonl({"question": "q"}), "d.jsonl",
     {"train": {"stage": "grpo", "per_device_train_batch_size": 8,
                "grpo": {"rewards": [{"type": "numeric_match", "column": "answer"}]}}},
     ["{data}", "could not tell the dataset format"]),
]

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}"
FLOOD = "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}"
# (id, template text, recipe changes, rc, names): through `train --overwrite` (these load the tiny model).
TEMPLATES = [
    ("loop-doctor", LOOP, {}, 1, ["did not finish within", "{template}"]),
    ("loop-no-doctor", LOOP, {"model": {"doctor": "off"}}, 2, ["chat template '{template}' was stopped",
                                                               "did not finish within"]),
    ("flood-doctor", FLOOD, {}, 1, ["template", "stopped"]),
    ("flood-no-doctor", FLOOD, {"model": {"doctor": "off"}}, 2, ["chat template '{template}' was stopped"]),
    ("syntax-error", "{% for m in messages %}{{ m.content }", {"model": {"doctor": "off"}}, 2, ["{template}"]),
    ("raises", "{{ raise_exception('no chats here') }}", {"model": {"doctor": "off"}}, 2,
     ["{template}", "no chats here"]),
    ("renders-nothing", "", {"model": {"doctor": "off"}}, 2, ["no row has any trainable token"]),
    ("unsafe-attribute", "{{ messages.__class__.__mro__ }}", {"model": {"doctor": "off"}}, 2, ["{template}"]),
    ("non-utf8", b"{{ messages[0].content }}\xff", {}, 2, ["{template}", "UTF-8"]),
]

# (id, args, rc, names): the command line itself.
ARGS = [
    ("train-no-recipe", ["train"], 2, ["Missing argument"]),
    ("validate-no-recipe", ["validate"], 2, ["Missing argument"]),
    ("unknown-command", ["trian"], 2, ["No such command"]),
    ("unknown-option", ["train", "{recipe}", "--turbo"], 2, ["No such option"]),
    ("set-without-value", ["train", "{recipe}", "--set"], 2, ["requires an argument"]),
    ("nproc-zero", ["train", "{recipe}", "--nproc", "0"], 2, ["--nproc"]),
    ("nproc-text", ["train", "{recipe}", "--nproc", "many"], 2, ["--nproc", "valid integer"]),
    ("recipe-missing", ["train", "{tmp}/nope.yaml"], 2, ["{tmp}/nope.yaml", "recipe file not found"]),
    ("recipe-is-folder", ["validate", "{tmp}"], 2, ["{tmp}", "recipe file not found"]),
    ("resume-no-checkpoint", ["train", "{recipe}", "--resume"], 2, ["no complete checkpoint", "{prev}"]),
    ("allow-changes-alone", ["train", "{recipe}", "--allow-changes"], 2, ["--allow-changes goes with --resume"]),
    ("run-exists", ["train", "{recipe}"], 2, ["{prev}", "already holds a run", "--overwrite"]),
    ("overwrite-non-run", ["train", "{recipe}", "--overwrite", "--set", "output_dir={tmp}/mine"], 2,
     ["{tmp}/mine", "not an ftcli run", "thesis.tex"]),
    ("output-dir-file", ["train", "{recipe}", "--set", "output_dir={tmp}/a-file"], 2, ["{tmp}/a-file", "is a file"]),
    ("output-dir-proc", ["train", "{recipe}", "--set", "output_dir=/proc/ftcli"], 2, ["/proc/ftcli", "cannot create"]),
    ("export-missing", ["export", "{tmp}/no-run"], 2, ["{tmp}/no-run"]),
    ("export-bad-quant", ["export", "{prev}", "--gguf", "q5_bogus"], 2, ["q5_bogus"]),
    ("doctor-missing", ["doctor", "{tmp}/no-model"], 2, ["{tmp}/no-model"]),
    ("chat-missing", ["chat", "{tmp}/no-model.gguf"], 2, ["{tmp}/no-model.gguf"]),
    ("export-gguf-no-value", ["export", "{prev}", "--gguf"], 2, ["--gguf", "requires an argument"]),
]

# (id, patch, args, rc, names): interruptions and kills, under --overwrite of the previous run.
SIGNALS = [
    ("ctrl-c-reading-recipe", "interrupt-recipe", ["train", "{recipe}", "--overwrite"], 130, ["interrupted"]),
    ("ctrl-c-reading-data", "interrupt-data", ["train", "{recipe}", "--overwrite"], 130,
     ["interrupted", "nothing to resume"]),
    ("ctrl-c-loading-model", "interrupt-model", ["train", "{recipe}", "--overwrite"], 130,
     ["interrupted", "nothing to resume"]),
    ("ctrl-c-in-doctor", "interrupt-doctor", ["train", "{recipe}", "--overwrite"], 130, ["interrupted"]),
    ("ctrl-c-building-trainer", "interrupt-trainer", ["train", "{recipe}", "--overwrite"], 130, ["interrupted"]),
    ("sigkill-after-move-aside", "sigkill-after-rename", ["train", "{recipe}"], 2,
     ["restored the earlier run", "{prev}", "already holds a run"]),
    ("sigkill-after-new-run-marked", "sigkill-after-mark", ["train", "{recipe}"], 2,
     ["restored the earlier run", "already holds a run"]),
]


def all_cases() -> list[Case]:
    cases = []
    for cid, recipe, names in RECIPES:
        cases.append(Case(f"recipe-{cid}-validate", ["validate", "{recipe}"], 2, names, recipe=recipe))
        cases.append(Case(f"recipe-{cid}-train", ["train", "{recipe}", "--overwrite"], 2, names, recipe=recipe))
    for cid, items, names in SETS:
        args = ["train", "{recipe}", "--overwrite", *[a for item in items for a in ("--set", item)]]
        cases.append(Case(cid, args, 2, names, kind="cli"))
    for cid, data, name, recipe, names in DATASETS:
        cases.append(Case(f"data-{cid}", ["train", "{recipe}", "--overwrite"], 2, names, recipe=recipe, data=data,
                          data_name=name, kind="data"))
    for cid, text, recipe, rc, names in TEMPLATES:
        cases.append(Case(f"template-{cid}", ["train", "{recipe}", "--overwrite"], rc, names, recipe=recipe,
                          template=text, kind="template"))
    for cid, args, rc, names in ARGS:
        cases.append(Case(f"args-{cid}", args, rc, names, kind="cli"))
    for cid, patch, args, rc, names in SIGNALS:
        cases.append(Case(f"signal-{cid}", args, rc, names, patch=patch, kind="signal"))
    return cases


CASES = all_cases()
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
