"""Reading .jsonl and .json datasets ourselves, so that every problem names the file and the 1-based line.

pyarrow's JSON reader counts rows from 0, skips blank lines in its count, stops on the first bad
byte with a message about its own buffers, and turns a row that is a list into a column error.
Here each line is decoded and parsed on its own: not UTF-8, not JSON, and not an object are each
said in words with the line (and column) they are on, and `dataset.skip_invalid` skips such lines
as it skips malformed rows. Rows stay plain dicts: no column types to unify across rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.errors import DataError

SKIP_HINT = "fix the line, or set dataset.skip_invalid: true to skip bad lines and rows"


@dataclass
class Rows:
    """Rows read from one file, each with the place it came from ("line 7" or "row 7")."""

    rows: list[dict]
    places: list[str]
    skipped: list[str] = field(default_factory=list)  # "FILE, line N: why" for lines that were not rows

    @property
    def column_names(self) -> list[str]:
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def rename_columns(self, mapping: dict[str, str]) -> "Rows":
        renamed = [{mapping.get(k, k): v for k, v in row.items()} for row in self.rows]
        return Rows(renamed, self.places, self.skipped)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def _kind(value) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
            type(None): "null"}.get(type(value), type(value).__name__)


def _line_problem(raw: bytes) -> tuple[object, str | None]:
    """(the row, None), or (None, why this line is not a row)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON at column {err.colno}: {err.msg}"
    except RecursionError:
        return None, "nests lists or objects too deeply to be a row"
    if not isinstance(value, dict):
        return None, f"a row must be a JSON object such as {{\"messages\": [...]}}, not {_kind(value)}"
    return value, None


def read_jsonl(path: Path, skip_invalid: bool) -> Rows:
    """One JSON object per line; blank lines are ignored."""
    data = _read_bytes(path)
    out = Rows([], [])
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        row, problem = _line_problem(raw.rstrip(b"\r"))
        if problem is None:
            out.rows.append(row)
            out.places.append(f"line {number}")
        elif skip_invalid:
            out.skipped.append(f"{path}, line {number}: {problem}")
        else:
            raise DataError(f"{path}, line {number}: {problem}", hint=SKIP_HINT)
    return out


def read_json(path: Path, skip_invalid: bool) -> Rows:
    """A JSON array of objects (or JSON lines saved as .json, as the Hugging Face loader accepts)."""
    data = _read_bytes(path)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as "
                        "UTF-8") from None
    except RecursionError:
        raise DataError(f"{path}: nests lists or objects too deeply to be a dataset") from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line
            return read_jsonl(path, skip_invalid)
        raise DataError(f"{path}, line {err.lineno}: not valid JSON at column {err.colno}: {err.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{path}: a .json dataset must be a list of objects, not {_kind(value)}")
    out = Rows([], [])
    for number, row in enumerate(value, start=1):
        if isinstance(row, dict):
            out.rows.append(row)
            out.places.append(f"row {number}")
            continue
        problem = f"{path}, row {number}: a row must be a JSON object, not {_kind(row)}"
        if not skip_invalid:
            raise DataError(problem, hint=SKIP_HINT)
        out.skipped.append(problem)
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the dataset: {err.strerror}") from None
    if not data.strip():
        raise DataError(f"{path}: the file is empty", hint="a dataset needs at least one row")
    return data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as some Windows editors write
