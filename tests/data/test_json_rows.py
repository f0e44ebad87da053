"""JSON datasets: every problem names the file and the 1-based line, in ftcli's words, and skip_invalid skips
lines that are not rows as it skips malformed rows."""

import json

import pytest

from ftcli.data import formats
from ftcli.errors import DataError
from ftcli.recipe import DatasetSection
from helpers.runs import conversation

GOOD = json.dumps(conversation("hi", "hello"))


def read(path, **options):
    return formats.read_rows(DatasetSection(path=str(path), **options))


def error_of(path, **options) -> str:
    with pytest.raises(DataError) as info:
        read(path, **options)
    return info.value.message


def write(tmp_path, lines: list[bytes | str], name="d.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_malformed_json_names_line_51_not_pyarrows_row_50(tmp_path):
    path = write(tmp_path, [GOOD] * 50 + ['{"messages": [}'])
    message = error_of(path)
    assert message.startswith(f"{path}, line 51: not valid JSON at column 15")


def test_blank_lines_keep_the_line_numbers_right(tmp_path):
    bad = json.dumps({"messages": [{"role": "wizard", "content": "x"}]})
    path = write(tmp_path, [GOOD, "", "  ", GOOD, bad])
    assert error_of(path, format="messages").startswith(f"{path}, line 5: ")


def test_non_utf8_bytes_name_the_line_and_the_byte(tmp_path):
    path = write(tmp_path, [GOOD, GOOD, b'{"text": "caf\xe9"}'])
    message = error_of(path)
    assert message.startswith(f"{path}, line 3: not UTF-8 text (byte 0xe9 at column 14)")


def test_a_row_that_is_a_list_is_said_in_words(tmp_path):
    path = write(tmp_path, [GOOD, json.dumps([{"role": "user", "content": "hi"}])])
    assert error_of(path) == f"{path}, line 2: a row must be a JSON object such as {{\"messages\": [...]}}, not a list"


def test_empty_file_is_a_clear_error(tmp_path):
    for content in (b"", b"\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        assert error_of(path) == f"{path}: the file is empty"


def test_skip_invalid_skips_bad_lines_and_counts_them(tmp_path):
    path = write(tmp_path, [GOOD, '{"messages": [}', b"\xff\xfe", "[1, 2]", GOOD])
    rows, fmt, report = read(path, skip_invalid=True)
    assert len(rows) == 2 and fmt == "messages" and report.rows_skipped == 3
    assert [e.split(":")[0] for e in report.skipped_examples] == [f"{path}, line {n}" for n in (2, 3, 4)]


def test_only_bad_lines_under_skip_invalid(tmp_path):
    path = write(tmp_path, ["[1]", "{"])
    message = error_of(path, skip_invalid=True)
    assert message.startswith(f"{path}: no rows; every line was skipped, e.g. {path}, line 1:")


def test_json_array_rows_and_json_lines_saved_as_json(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps([conversation("a", "b"), "oops"]))
    assert error_of(array) == f"{array}, row 2: a row must be a JSON object, not a string"
    rows, _, _ = read(array, skip_invalid=True)
    assert len(rows) == 1
    lines = write(tmp_path, [GOOD, GOOD], name="lines.json")
    assert len(read(lines)[0]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"text": "a"},\n  {"text": }\n]')
    assert error_of(broken).startswith(f"{broken}, line 3: not valid JSON at column 12")


def test_rows_with_different_keys_need_no_common_schema(tmp_path):
    path = write(tmp_path, [json.dumps({"prompt": "p", "completion": "c"}),
                            json.dumps({"prompt": "q", "completion": "d", "extra": [1]})])
    rows, fmt, _ = read(path)
    assert fmt == "prompt_completion" and [r["messages"][0]["content"] for r in rows] == ["p", "q"]
