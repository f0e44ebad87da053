"""Exports add to the output folder and never delete what the same call did not make.

Another quant, merged/ or the adapter goes in beside the files already there; only a file of the same name
needs `--overwrite`. export-report.json and an ftcli-written Modelfile describe the whole folder, so they are
updated, never refused: the report keeps the entries of the files still there and adds the new ones, and the
Modelfile moves to the first GGUF of the call, so that it always points at a file that exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import BadInput
from ftcli.export.options import ExportOptions
from ftcli.export.report import REPORT

MODELFILE = "Modelfile"
OUR_MODELFILE = "written by ftcli export"  # the header line build_modelfile writes


def planned_names(opts: ExportOptions) -> list[str]:
    """The entries this call writes into the output folder (the report and the Modelfile aside)."""
    names = [f"model-{quant}.gguf" for quant in opts.gguf]
    names += ["merged"] if opts.safetensors else []
    names += ["adapter"] if opts.adapter else []
    names += ["adapter-lora.gguf"] if opts.adapter_gguf else []
    return names


def ours(modelfile: Path) -> bool:
    try:
        return OUR_MODELFILE in modelfile.read_text(encoding="utf-8")[:500]
    except (OSError, UnicodeDecodeError):
        return False


def plan(out: Path, opts: ExportOptions) -> ExportOptions:
    """Check the output folder before anything is written: a file is not a folder, and a same-name entry is
    replaced only with --overwrite. An ftcli Modelfile already there follows the new GGUF files."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder", hint="pass a folder (it is created if missing)")
    if not out.is_dir():
        return opts
    taken = [name for name in planned_names(opts) if (out / name).exists()]
    modelfile = out / MODELFILE
    if modelfile.exists() and opts.ollama and not ours(modelfile):
        taken.append(MODELFILE)  # the user's own Modelfile is theirs to keep
    if taken and not opts.overwrite:
        raise BadInput(f"{out} already has {', '.join(taken)}",
                       hint="pass --overwrite to replace just these (everything else in the export is kept), "
                            "or --out DIR for a new folder")
    if opts.gguf and modelfile.exists() and ours(modelfile):
        opts.ollama = True  # keep the Modelfile in step: it moves to the first GGUF of this call
    return opts


def previous_report(out: Path) -> dict | None:
    try:
        return json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def merge_reports(old: dict | None, new: dict, out: Path, written: list[str]) -> dict:
    """The report of the whole folder after this call: the new head and entries, plus the old entries of files
    still there that this call did not write (an intermediate of this call does not displace a kept file)."""
    if not old:
        new["history"] = [{"created": new["created"], "wrote": written}]
        return new
    replaced = {name.rstrip("/") for name in written}
    kept_old = [e for e in old.get("files", []) if e.get("file", "").rstrip("/") not in replaced
                and e.get("kept", True) and (out / e.get("file", "").rstrip("/")).exists()]
    still_there = {e["file"] for e in kept_old}
    fresh = [e for e in new["files"] if e["file"] not in still_there]
    history = old.get("history") or [{"created": old.get("created"), "wrote": [e.get("file") for e in kept_old]}]
    new["files"] = kept_old + fresh
    for key in ("calibration", "quality_plot"):  # an earlier call's imatrix.gguf and plot stay described
        if key not in new and old.get(key):
            new[key] = old[key]
    new["history"] = history + [{"created": new["created"], "wrote": written}]
    return new
