"""`ftcli doctor`: find tokenizer, chat-template, config and embedding bugs before they ruin a run.

    findings = doctor.check(model, tokenizer, template, recipe)        # live objects
    report = doctor.diagnose("path/or/recipe.yaml/or/model.gguf")      # any CLI target
    report = doctor.diagnose(target, fix_dir="fixed/")                 # corrected copies, never in place
    tokenizer, template, findings = doctor.run_for_training(model, tokenizer, template, recipe, log)

Each check is a small function registered with an id, a severity, a one-line fix and the row of
research/doctor-bugs.md it comes from (`CHECKS`); `docs/doctor.md` lists them all.

May import: ftcli.engine (the packed-numerics check patches a model), ftcli.models, ftcli.data, ftcli.recipe,
ftcli.errors.
"""

from __future__ import annotations

import os
from typing import Callable

# Importing the check modules registers their checks, in this order: tokens, template, model.
from ftcli.doctor import checks_tokens  # noqa: F401, I001
from ftcli.doctor import checks_tokenizer_files  # noqa: F401
from ftcli.doctor import checks_template  # noqa: F401
from ftcli.doctor import checks_model  # noqa: F401
from ftcli.doctor import fixes, patching, targets
from ftcli.doctor.registry import CHECKS, Check, Finding, as_hits
from ftcli.doctor.report import Report, sort_findings
from ftcli.doctor.subject import Subject
from ftcli.errors import BadInput, TrainingFailed

__all__ = ["CHECKS", "Check", "DoctorFailed", "Finding", "Report", "Subject", "as_facts", "check", "diagnose",
           "fix", "reapply", "run", "run_for_training"]

MODES = ("fix", "warn", "off")


class DoctorFailed(TrainingFailed):
    """The doctor found errors it cannot fix: the run stops before training (exit 1)."""


def run(subject: Subject, only: list[str] | None = None) -> list[Finding]:
    """Every registered check (or `only` those ids) on `subject`, sorted by severity.

    A check that crashes never takes the doctor down: it becomes an info finding (set
    FTCLI_DOCTOR_STRICT=1 to raise instead, as the tests do).
    """
    findings = []
    for c in CHECKS.values():
        if (only is not None and c.id not in only) or not has_needs(subject, c.needs):
            continue
        try:
            hits = as_hits(c.func(subject))
        except Exception as err:  # noqa: BLE001
            if os.environ.get("FTCLI_DOCTOR_STRICT"):
                raise
            findings.append(Finding(c.id, "info", f"the check could not run ({type(err).__name__}: {err})",
                                    False, c.fix, c.row))
            continue
        for hit in hits:
            fixable = c.fixable if hit.fixable is None else (hit.fixable and c.fixable)
            findings.append(Finding(c.id, hit.severity or c.severity, hit.message, bool(fixable), c.fix, c.row,
                                    dict(hit.data)))
    return sort_findings(findings, list(CHECKS))


def has_needs(s: Subject, needs: tuple[str, ...]) -> bool:
    """Whether the subject has what a check reads; checks without their inputs are skipped."""
    have = {
        "template": s.template is not None, "live": s.tokenizer is not None, "model": s.model is not None,
        "weights": s.weights is not None, "config": bool(s.config), "files": s.folder is not None,
        "samples": bool(s.samples), "tokens": bool(s.vocab) or any(s.specials().values()),
    }
    return all(have.get(n, True) for n in needs)


def check(model, tokenizer, template, recipe=None, *, samples: list | None = None,
          kind: str = "training", only: list[str] | None = None) -> list[Finding]:
    """Findings for live objects: a model (or None), a tokenizer, a ftcli ChatTemplate (or None)."""
    return run(targets.from_objects(model, tokenizer, template, recipe, kind=kind, samples=samples), only)


def fix(model, tokenizer, template, findings: list[Finding], recipe=None):
    """Apply the fixable findings in memory; returns (template, ids of the checks fixed)."""
    subject = targets.from_objects(model, tokenizer, template, recipe)
    patch = fixes.plan(subject, findings)
    template = patching.apply_in_memory(subject, patch, template)
    return template, patch.applied


def diagnose(target: str, *, fix_dir: str | None = None, overrides=()) -> Report:
    """Run the doctor on a CLI target; with `fix_dir`, write corrected files there and re-check them.

    Raises BadInput (exit 2) when the target cannot be read.
    """
    subject = targets.resolve_target(str(target), overrides)
    report = Report(target=str(target), findings=run(subject), notes=list(subject.notes))
    if fix_dir is None:
        return report
    report.out_dir = str(fix_dir)
    if subject.kind == "gguf":
        raise BadInput("--fix does not rewrite GGUF files: fix the Hugging Face folder and export again")
    patch = fixes.plan(subject, report.findings)
    try:
        report.written = patching.write_fixed(subject, patch, fix_dir)
    except ValueError as err:
        raise BadInput(str(err)) from None
    report.fixed = patch.applied
    return report


# Findings that are real for other pipelines but cannot change what `ftcli train` does (it encodes chats
# without special tokens): summarised in one line at the start of a run, shown in full by `ftcli doctor`.
TRAINING_UNAFFECTED = ("double-bos",)


def run_for_training(model, tokenizer, template, recipe, log: Callable[[str], None] = lambda _: None):
    """The doctor at the start of `ftcli train` (model.doctor: fix | warn | off).

    fix: fixable findings are fixed in memory (tokenizer, model config and embeddings, template),
    which then travel with everything the run saves; errors left unfixed raise DoctorFailed.
    warn: findings are only logged. off: nothing runs. Returns (tokenizer, template, findings),
    each finding with `data["fixed"]` telling whether it was fixed.
    """
    mode = getattr(recipe.model, "doctor", "fix") if recipe is not None else "fix"
    if mode == "off":
        log("doctor: off (model.doctor: off)")
        return tokenizer, template, []
    findings = check(model, tokenizer, template, recipe)
    if mode == "fix" and any(f.fixable for f in findings):
        template, applied = fix(model, tokenizer, template, findings, recipe)
        after = check(model, tokenizer, template, recipe)
        still = {f.check for f in after}
        for f in findings:
            f.data["fixed"] = f.check in applied and f.check not in still
        before = {f.check for f in findings}
        findings += [f for f in after if f.check not in before]  # anything a fix brought up
    aside = []
    for f in findings:
        f.data.setdefault("fixed", False)
        if f.severity == "info" and not f.data["fixed"]:
            continue
        if f.check in TRAINING_UNAFFECTED and f.severity == "warning" and not f.data["fixed"]:
            aside.append(f.check)
            continue
        state = "fixed" if f.data["fixed"] else f.severity
        log(f"doctor ({state}) {f.check}: {f.message}")
    if aside:  # true, but not this command's concern: one line, and where to read more
        log(f"doctor: {len(aside)} finding(s) that do not affect training ({', '.join(aside)}); "
            "details: ftcli doctor RUN_DIR")
    blocking = [f for f in findings if f.severity == "error" and not f.data["fixed"]]
    if blocking and mode == "fix":
        raise DoctorFailed(
            f"the doctor found {len(blocking)} error(s) it cannot fix: "
            + "; ".join(f"{f.check}: {f.message}" for f in blocking),
            hint="fix them (see `ftcli doctor` and docs/doctor.md), or set model.doctor: warn to train anyway")
    if not findings:
        log("doctor: no findings")
    return tokenizer, template, findings


MODEL_SIDE = ("untrained-special-tokens", "eos-not-end-of-turn", "stop-tokens-incomplete", "pad-is-eos",
              "pad-out-of-range", "gemma-activation", "gemma2-query-scale", "tied-embeddings")


def reapply(model, tokenizer, template, recipe=None) -> list[str]:
    """Re-apply the model-side fixes (embedding rows, generation_config and config ids) to a model
    rebuilt from the base weights, e.g. a LoRA adapter merged into a freshly loaded base, whose
    rows and configs are the base's again. The tokenizer already carries its own fixes.
    Returns the ids of the checks fixed."""
    findings = check(model, tokenizer, template, recipe, only=list(MODEL_SIDE))
    return fix(model, tokenizer, template, findings, recipe)[1]


def as_facts(findings: list[Finding]) -> list[dict]:
    """Findings as plain dicts for the run manifest."""
    return [{"check": f.check, "severity": f.severity, "message": f.message,
             "fixed": bool(f.data.get("fixed"))} for f in findings]

