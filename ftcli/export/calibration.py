"""Calibration and held-out token rows for the importance matrix, the sensitivity pass and the quality report.

`--imatrix auto` takes the run's own data: its eval rows, or its training rows when the run
had no eval split (the same seeded split as training). `--imatrix FILE.jsonl` takes other
text (rows with "text", "messages", or any format ftcli trains on). Either way the pool is
shuffled once (seed 0) and cut in two disjoint parts: held-out rows for the quality report
first, then calibration rows, each capped at a token budget. Chats are rendered with the
training template, so the model sees exactly what it was trained on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftcli.data import templates
from ftcli.errors import BadInput, DataError

MAX_ROW_TOKENS = 512
CALIBRATION_TOKENS = 32768
HELDOUT_TOKENS = 8192


@dataclass
class Rows:
    calibration: list[list[int]] = field(default_factory=list)
    heldout: list[list[int]] = field(default_factory=list)
    source: str = ""

    @property
    def calibration_tokens(self) -> int:
        return sum(len(r) for r in self.calibration)

    @property
    def heldout_tokens(self) -> int:
        return sum(len(r) for r in self.heldout)


def load_rows(spec: str, run_root: Path | None, tokenizer, template, calibration_tokens: int = CALIBRATION_TOKENS,
              heldout_tokens: int = HELDOUT_TOKENS) -> Rows:
    """`spec` is "auto" (the run's data) or a .jsonl path; returns disjoint held-out and calibration rows."""
    if spec == "auto":
        records, source = _run_records(run_root)
    else:
        records, source = _file_records(Path(spec)), str(spec)
    texts = [t for t in (_text_of(r, template, tokenizer) for r in records) if t]
    random.Random(0).shuffle(texts)
    encoded = [ids for ids in (list(tokenizer(t)["input_ids"])[:MAX_ROW_TOKENS] for t in texts) if len(ids) >= 2]
    # a quarter of the text at most is held out, so a small file still leaves most of it for calibration
    heldout_tokens = min(heldout_tokens, sum(len(ids) for ids in encoded) // 4)
    rows = Rows(source=source)
    budget, target = heldout_tokens, rows.heldout
    for ids in encoded:
        if budget <= 0 and target is rows.heldout:
            budget, target = calibration_tokens, rows.calibration
        if budget <= 0:
            break
        target.append(ids[:max(2, budget)])
        budget -= len(target[-1])
    if not rows.calibration or not rows.heldout:
        raise BadInput(f"{source}: too little text for calibration ({len(texts)} usable rows, "
                       f"{rows.heldout_tokens + rows.calibration_tokens} tokens)",
                       hint="give --imatrix FILE.jsonl with more rows (one {\"text\": ...} per line)")
    return rows


def _run_records(run_root: Path | None) -> tuple[list[dict], str]:
    from ftcli.data import formats
    from ftcli.recipe import DatasetSection

    manifest = run_root / "recipe.resolved.yaml" if run_root else None
    if manifest is None or not manifest.is_file():
        raise BadInput("--imatrix auto calibrates on a run's own data, and this is not a run directory",
                       hint="pass --imatrix FILE.jsonl (one {\"text\": ...} per line)")
    data = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    try:
        section = DatasetSection(**(data.get("dataset") or {}))
    except Exception as err:  # noqa: BLE001 (pydantic: the saved section is incomplete)
        raise BadInput(f"{manifest}: its dataset section cannot be read back ({err})",
                       hint="pass --imatrix FILE.jsonl instead") from None
    rows, _, _ = formats.read_rows(section)
    seed = int(((data.get("train") or {}).get("seed")) or 42)
    train, evals = formats.split_eval(rows, section.eval_fraction, seed)
    return (evals, f"{section.path} (eval split)") if evals else (train, f"{section.path} (training rows)")


def _file_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise BadInput(f"--imatrix {path}: no such file", hint="give auto (the run's data) or a .jsonl file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadInput(f"{path}, line {number}: not JSON ({err.msg})") from None
        records.append(record if isinstance(record, dict) else {"text": str(record)})
    return records


def _text_of(record: dict, template, tokenizer) -> str:
    """The text the model sees for one row: a chat rendered with the training template, or plain text."""
    from ftcli.data import formats

    if isinstance(record.get("text"), str):
        return record["text"]
    try:
        row = formats.to_standard(record, formats.detect_format(list(record)))
    except (ValueError, KeyError, DataError):  # a row that is not a training row adds no text
        return ""
    if "messages" in row:
        return templates.render(template, row["messages"], tokenizer)
    if "text" in row:
        return row["text"]
    prompt, chosen = row.get("prompt"), row.get("chosen")
    if isinstance(prompt, list) and isinstance(chosen, list):
        return templates.render(template, prompt + chosen, tokenizer)
    return " ".join(str(v) for v in row.values() if isinstance(v, str))
