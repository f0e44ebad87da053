"""The doctor's report: the JSON shape of `ftcli doctor --json` and the grouping cli.py prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftcli.doctor.registry import RANK, SEVERITIES, Finding


@dataclass
class Report:
    target: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    fixed: list[str] = field(default_factory=list)  # check ids --fix corrected
    written: list[str] = field(default_factory=list)  # files --fix wrote
    out_dir: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def exit_code(self) -> int:
        """0 no errors, 1 errors found (DESIGN.md exit codes; 2 is raised before a report exists)."""
        return 1 if self.errors else 0

    def grouped(self) -> list[tuple[str, list[Finding]]]:
        return [(sev, [f for f in self.findings if f.severity == sev]) for sev in SEVERITIES
                if any(f.severity == sev for f in self.findings)]

    def to_json(self) -> dict:
        out = {"target": self.target, "findings": [f.to_json() for f in self.findings], "notes": self.notes}
        if self.out_dir is not None:
            out["fix"] = {"out_dir": self.out_dir, "fixed": self.fixed, "written": self.written}
        return out


def sort_findings(findings: list[Finding], order: list[str]) -> list[Finding]:
    position = {cid: i for i, cid in enumerate(order)}
    return sorted(findings, key=lambda f: (RANK[f.severity], position.get(f.check, 999)))
