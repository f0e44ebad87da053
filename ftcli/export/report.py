"""export-report.json: its fixed head (source, versions), its text, and the console rows made from it."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json

from ftcli.export.source import Source

REPORT = "export-report.json"
# A GGUF's verdict from its logits against the HF model's on the same tokens (docs/export.md, "Verdicts"):
# the first row whose top-1 agreement is at least and whose mean KL is at most the given values.
VERDICTS = ((0.9, 0.05, "fine"), (0.6, 0.5, "degraded"))


def verdict(parity: dict | None) -> str | None:
    """fine, degraded or broken; None when the file was not checked."""
    top1, kl = (parity or {}).get("top1_agreement"), (parity or {}).get("kl_mean")
    if top1 is None or kl is None:
        return None
    return next((word for min_top1, max_kl, word in VERDICTS if top1 >= min_top1 and kl <= max_kl), "broken")


def new_report(src: Source) -> dict:
    """The report before any file is written: when, from what, with which package versions."""
    return {"ftcli_export": 1, "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "source": {"kind": src.kind, "path": str(src.root), "base_model": src.base_name,
                       "merged_from_adapter": src.model_dir is None, "qlora": src.load_in_4bit},
            "versions": _versions(), "files": [], "notes": []}


def report_text(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def report_summary(report: dict) -> list[dict]:
    """Rows for the console: file, size, parity figures."""
    rows = []
    for entry in report.get("files", []):
        p = entry.get("parity") or {}
        rows.append({"file": entry["file"], "bytes": entry.get("bytes"), "kept": entry.get("kept", True),
                     "max_abs_diff": p.get("max_abs_diff"), "nmse": p.get("nmse"),
                     "top1": p.get("top1_agreement"), "kl": p.get("kl_mean"),
                     "fallbacks": len(entry.get("fallbacks") or []), "verdict": verdict(p)})
    return rows


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("ftcli", "transformers", "torch", "peft", "gguf", "llama_cpp_python"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name.replace("_python", "-python") if name == "llama_cpp_python" else name)
    return out
