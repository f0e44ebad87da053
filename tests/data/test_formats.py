"""Datasets: every format, column mapping, bad rows, truncation, file types."""

import json

import pytest

from ftcli.data import templates, formats, messages, supervised
from ftcli.errors import DataError
from ftcli.models.pretrained import load_tokenizer
from ftcli.recipe import DatasetSection, ModelSection
from helpers.runs import conversation, write_jsonl


def section(path, **kw):
    return DatasetSection(path=str(path), **kw)


FORMAT_ROWS = {
    "messages": conversation("hi", "hello"),
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "alpaca": {"instruction": "hi", "input": "", "output": "hello"},
    "prompt_completion": {"prompt": "hi", "completion": "hello"},
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_ROWS))
def test_supervised_formats_become_the_same_conversation(tmp_path, fmt):
    path = write_jsonl(tmp_path / "d.jsonl", [FORMAT_ROWS[fmt]] * 2)
    for given in (fmt, "auto"):
        rows, detected, report = formats.read_rows(section(path, format=given))
        assert detected == fmt
        assert rows[0] == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        assert report.rows_read == 2 and report.fingerprint.startswith("sha256:")


def test_alpaca_input_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Sum", "input": "1 2", "output": "3"}])
    rows, _, _ = formats.read_rows(section(path, system_prompt="Be brief."))
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}]


def test_text_preference_and_prompt_formats(tmp_path):
    rows, fmt, _ = formats.read_rows(section(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain text"}])))
    assert fmt == "text" and rows == [{"text": "plain text"}]
    pref = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    rows, fmt, _ = formats.read_rows(section(write_jsonl(tmp_path / "p.jsonl", [pref])))
    assert fmt == "preference" and rows == [pref]
    rows, fmt, _ = formats.read_rows(section(write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "answer": "4"}])))
    assert fmt == "prompt" and rows == [{"prompt": "q", "answer": "4"}]


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "hi", "reply": "hello"}])
    rows, fmt, _ = formats.read_rows(section(path, format="prompt_completion",
                                          columns={"prompt": "question", "completion": "reply"}))
    assert rows[0]["messages"][1]["content"] == "hello"
    with pytest.raises(DataError, match="do not exist"):
        formats.read_rows(section(path, columns={"prompt": "nope"}))


def test_malformed_row_names_file_row_and_problem(tmp_path):
    good = conversation("hi", "hello")
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [good, good, bad, good])
    with pytest.raises(DataError) as info:
        formats.read_rows(section(path, format="messages"))
    assert f"{path}, line 3" in info.value.message and "role 'wizard'" in info.value.message
    assert "skip_invalid" in info.value.hint


def test_skip_invalid_counts_skipped_rows(tmp_path):
    good = conversation("hi", "hello")
    rows_in = [good, {"messages": [{"role": "user", "content": "no reply"}]}, {"messages": "oops"}, good]
    path = write_jsonl(tmp_path / "d.jsonl", rows_in)
    rows, _, report = formats.read_rows(section(path, format="messages", skip_invalid=True))
    assert len(rows) == 2 and report.rows_skipped == 2
    assert "no assistant message" in report.skipped_examples[0]


def test_no_usable_rows_and_missing_file_and_bad_type(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": "oops"}])
    with pytest.raises(DataError, match="no usable rows"):
        formats.read_rows(section(path, format="messages", skip_invalid=True))
    with pytest.raises(DataError, match="not found"):
        formats.read_rows(section(tmp_path / "missing.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        formats.read_rows(section(tmp_path / "d.txt"))
    with pytest.raises(DataError, match="could not tell the dataset format"):
        formats.read_rows(section(write_jsonl(tmp_path / "e.jsonl", [{"foo": 1}])))


def test_csv_parquet_and_saved_dataset_folder(tmp_path):
    import datasets

    table = datasets.Dataset.from_list([{"prompt": "hi", "completion": "hello"}] * 3)
    table.to_csv(tmp_path / "d.csv")
    table.to_parquet(tmp_path / "d.parquet")
    table.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(tmp_path / "saved_dict")
    for path in ("d.csv", "d.parquet", "saved", "saved_dict"):
        rows, fmt, report = formats.read_rows(section(tmp_path / path))
        assert fmt == "prompt_completion" and len(rows) == 3, path
    with pytest.raises(DataError, match="no split 'validation'"):
        formats.read_rows(section(tmp_path / "saved_dict", split="validation"))


def test_eval_split_is_seeded_and_disjoint():
    rows = [{"i": i} for i in range(20)]
    train, evals = formats.split_eval(rows, 0.2, seed=1)
    assert len(evals) == 4 and len(train) == 16
    assert not {r["i"] for r in train} & {r["i"] for r in evals}
    assert formats.split_eval(rows, 0.2, seed=1) == (train, evals)
    assert formats.split_eval(rows, 0.0, seed=1) == (rows, [])


def test_build_sft_truncates_counts_and_masks(tmp_path):
    tokenizer = load_tokenizer(ModelSection(name="builtin:tiny-llama3"))
    template = templates.load_family("llama3")
    rows = [conversation("short", "ok"), conversation("word " * 200, "a long answer " * 50)]
    report = formats.DataReport(source="x", fingerprint="y")
    built = supervised.build_sft(rows, template, tokenizer, "assistant", 64, report)
    assert report.rows_truncated == 1
    # The long row's assistant reply starts after token 64, so it has nothing to train and is dropped.
    assert report.rows_without_targets == 1 and len(built) == 1
    ids, labels = built[0]["input_ids"], built[0]["labels"]
    trained = [i for i, label in zip(ids, labels) if label != -100]
    assert tokenizer.decode(trained) == "ok<|eot_id|>"


def test_text_rows_train_on_everything_and_end_with_eos():
    tokenizer = load_tokenizer(ModelSection(name="builtin:tiny-llama3"))
    item = supervised.encode_sft_row({"text": "hello world"}, templates.load_family("llama3"), tokenizer, "assistant", 64)
    assert item["labels"] == item["input_ids"] and item["input_ids"][-1] == tokenizer.eos_token_id


def test_system_turn_is_folded_for_templates_without_system():
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert messages.fold_system(turns) == [{"role": "user", "content": "S\n\nU"}, {"role": "assistant", "content": "A"}]
    tokenizer = load_tokenizer(ModelSection(name="builtin:tiny-mistral"))
    item = supervised.encode_sft_row({"messages": turns}, templates.load_family("mistral"), tokenizer, "assistant", 64)
    assert "S\n\nU" in tokenizer.decode(item["input_ids"])


def test_chat_sample_dataset_is_well_formed():
    from helpers.runs import REPO

    for line in (REPO / "recipes" / "data" / "chat-sample.jsonl").read_text().splitlines():
        formats.to_standard(json.loads(line), "messages")


def test_preference_replies_may_be_one_message_in_sharegpt_keys():
    """Axolotl's and LLaMA-Factory's ranking data give each reply as one message, often as from/value."""
    row = {"prompt": [{"from": "human", "value": "2 + 2?"}], "chosen": {"from": "gpt", "value": "4"},
           "rejected": {"role": "assistant", "content": "5"}}
    assert formats.preference_row(row) == {
        "prompt": [{"role": "user", "content": "2 + 2?"}], "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}]}
    with pytest.raises(ValueError, match="a message or a list of messages"):
        formats.preference_row({"prompt": "2 + 2?", "chosen": 4, "rejected": "5"})
