"""`ftcli export`: from a run directory (or a model folder) to verified files in one folder.

    source (merged/ | model/ | adapter/ + 16-bit base) -> merged safetensors
      -> model-<base>.gguf (our writer) -> model-<quant>.gguf (llama.cpp quantiser)
      -> logits + tokenisation parity against the HF model -> Modelfile -> export-report.json

Everything is written into a temp folder beside the output folder and moved into place when
complete. Exports are additive (additive.py): files already in the folder are kept, and only a file of
the same name needs `overwrite`. Nothing here prints: progress goes to the `log` callable.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ftcli.errors import BadInput, MissingPackage
from ftcli.export import additive, ollama
from ftcli.export import quantize as q
from ftcli.export.options import ExportOptions, disk_check, plan_formats
from ftcli.export.report import REPORT, new_report, report_text
from ftcli.export.report import report_summary  # noqa: F401 (re-exported: ftcli.cli.cmd_export imports it from here)
from ftcli.export.source import Source, hf_model_folder, resolve_source, run_template
from ftcli.export.vocab import adds_special
from ftcli.files import staged_into


def export(target: Path, opts: ExportOptions, log: Callable[[str], None] = lambda _: None) -> dict:
    """Run an export (or, with opts.verify_only, re-verify an existing one); returns the report."""
    src = resolve_source(target)
    opts = plan_formats(src, opts)
    out = Path(opts.out_dir) if opts.out_dir else src.root / "export"
    if opts.verify_only:
        from ftcli.export import gguf_files  # lazy: it loads numpy

        return gguf_files.verify_existing(src, out, opts, log)
    _check_request(src, opts)
    opts = additive.plan(out, opts)

    started = time.time()
    base = next((b for b in ("f16", "bf16", "f32") if b in opts.gguf), "f16")
    report = new_report(src)
    with staged_into(out) as tmp:
        _write_model_files(src, opts, tmp, out, base, report, log)
        if opts.adapter:
            _link_or_copy(src.adapter_dir, tmp / "adapter")
            report["files"].append({"file": "adapter/", "format": "peft-adapter"})
        report["seconds"] = round(time.time() - started, 1)
        written = sorted(p.name for p in tmp.iterdir())
        report = additive.merge_reports(additive.previous_report(out), report, out, written)
        (tmp / REPORT).write_text(report_text(report), encoding="utf-8")
    report["out_dir"] = str(out)
    return report


def _check_request(src: Source, opts: ExportOptions) -> None:
    """Refuse, before anything is written, what cannot be done: missing packages, no adapter, nothing asked
    for."""
    if opts.gguf:
        q.require_llama_cpp()
        _require_gguf("GGUF export")
    if (opts.adapter or opts.adapter_gguf) and src.adapter_dir is None:
        raise BadInput("--adapter/--adapter-gguf: this run has no adapter/ (a full finetune has no LoRA adapter)")
    if opts.adapter_gguf and not opts.gguf:
        q.require_llama_cpp()
    if not (opts.safetensors or opts.gguf or opts.adapter or opts.adapter_gguf):
        raise BadInput("nothing to export", hint="pass --safetensors, --gguf q8_0[,q4_k_m...], --ollama or --adapter")
    if opts.imatrix and not [x for x in opts.gguf if x not in q.BASE_TYPES]:
        raise BadInput("--imatrix calibrates quantised files, and none is asked for",
                       hint="add a quant type, e.g. --gguf q4_k_m --imatrix auto")
    dynamic = [x for x in opts.gguf if x in q.DYNAMIC]
    if dynamic and not opts.imatrix and src.kind != "run":
        raise BadInput(f"{', '.join(dynamic)} measures each tensor's sensitivity on calibration rows, and "
                       f"{src.root} is a model folder without a run's data",
                       hint="pass --imatrix FILE.jsonl (one {\"text\": ...} per line), or export a run directory")


def _require_gguf(what: str) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingPackage("gguf", what, q.INSTALL) from None


def _write_model_files(src: Source, opts: ExportOptions, tmp: Path, out: Path, base: str, report: dict,
                       log) -> None:
    """Into `tmp`: merged/, the GGUF files, adapter-lora.gguf and the Modelfile, as `opts` asks; fills `report`."""
    from transformers import AutoTokenizer

    from ftcli.export import gguf_files  # lazy: it loads numpy

    template_holder: dict = {}

    def template_source(tokenizer):
        template_holder["t"] = run_template(src, tokenizer, opts.template)
        return template_holder["t"].source

    keep = tmp / "merged" if opts.safetensors and src.model_dir is None else None
    with hf_model_folder(src, template_source, keep, log) as model_dir:
        disk_check(out.parent, model_dir, opts, base, copy=opts.safetensors and keep is None)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        template = template_holder.get("t") or run_template(src, tokenizer, opts.template)
        report["template"] = {"name": template.name, "end_of_turn": template.end_of_turn,
                              "stop_tokens": list(template.stop_tokens)}
        if opts.safetensors and keep is None:
            log(f"copying {model_dir.name}/ to merged/")
            _link_or_copy(model_dir, tmp / "merged")
        if opts.safetensors:
            report["files"].append({"file": "merged/", "format": "safetensors"})
        modelfile = None
        if opts.ollama:  # before the slow part: a template that cannot be translated stops here
            strip_bos = adds_special(tokenizer, tokenizer.bos_token_id, first=True)
            modelfile = ollama.build_modelfile(f"model-{opts.gguf[0]}.gguf", template, tokenizer, strip_bos,
                                               system=opts.system or src.system_prompt,
                                               header=f"written by ftcli export from {src.root}")
        get_ref = gguf_files.reference_once(model_dir, template, log) if opts.verify else None
        if opts.gguf:
            report.update(gguf_files.write_ggufs(model_dir, tmp, base, opts, template, src.name, log, get_ref,
                                                 run_root=src.root if src.kind == "run" else None))
        if opts.adapter_gguf:
            report["files"].append(gguf_files.write_lora(src, tmp, template, log, get_ref))
        if modelfile is not None:
            (tmp / "Modelfile").write_text(modelfile.text, encoding="utf-8")
            report["files"].append({"file": "Modelfile", "format": "ollama", "from": f"model-{opts.gguf[0]}.gguf",
                                    "stops": modelfile.stops, "golden_conversations_checked":
                                    modelfile.golden_checked, "notes": modelfile.notes})


def _link_or_copy(src: Path, dst: Path) -> None:
    def copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=copy)


def check_export_ready(section) -> None:
    """Before training: the recipe's export section can be honoured (quant names, packages)."""
    if {"gguf", "ollama"} & set(section.formats):
        q.parse_quants(section.gguf_quant or ["q8_0"])
        q.require_llama_cpp()
        _require_gguf("export.formats: gguf")


def export_after_training(run_dir: Path, section, log: Callable[[str], None] = lambda _: None) -> dict | None:
    """The GGUF/Ollama part of a recipe's export section, at the end of `ftcli train` (merged/ and
    adapter/ are the run's own), into RUN_DIR/export/."""
    formats = set(section.formats)
    if not {"gguf", "ollama"} & formats:
        return None
    opts = ExportOptions(gguf=q.parse_quants(section.gguf_quant or ["q8_0"]), ollama="ollama" in formats)
    return export(Path(run_dir), opts, log)
