"""The check registry: each check is a small function with an id, a severity, a one-line fix,
whether the doctor can fix it, and the row of ../shared/research/doctor-bugs.md it comes from.

A check function takes a `Subject` and returns hits: a string (the message), a `Hit`, a list
of either, or None for "nothing found". The runner turns hits into `Finding`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

SEVERITIES = ("error", "warning", "info")
RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Check:
    id: str
    severity: str  # default severity; a hit may raise or lower it
    row: str  # catalogue row(s) in research/doctor-bugs.md, e.g. "T02"
    fix: str  # one line: what the user (or --fix) should do
    fixable: bool  # whether ftcli can fix it (in memory at training start, or with --fix)
    needs: tuple[str, ...]  # what the subject must have: "template", "tokenizer", "model", "config", ...
    func: Callable
    group: str


@dataclass
class Hit:
    message: str
    severity: str | None = None
    fixable: bool | None = None
    data: dict = field(default_factory=dict)  # facts the fixer needs (ids, strings)


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    fixable: bool
    fix: str
    row: str
    data: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"check": self.check, "severity": self.severity, "message": self.message,
                "fixable": self.fixable, "fix": self.fix, "catalogue": self.row}


CHECKS: dict[str, Check] = {}


def check(id: str, severity: str, row: str, fix: str, *, fixable: bool = False,
          needs: Iterable[str] = (), group: str = "") -> Callable:
    """Register a check function under `id`."""
    assert severity in SEVERITIES, severity

    def register(func: Callable) -> Callable:
        if id in CHECKS:
            raise ValueError(f"doctor check {id!r} registered twice")
        CHECKS[id] = Check(id, severity, row, fix, fixable, tuple(needs), func, group or func.__module__.rsplit(".", 1)[-1])
        func.check_id = id
        return func

    return register


def as_hits(result) -> list[Hit]:
    if result is None or result is False:
        return []
    if isinstance(result, (str, Hit)):
        result = [result]
    return [Hit(r) if isinstance(r, str) else r for r in result]
