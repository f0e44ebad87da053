"""An export's GGUF files (model-<quant>.gguf, adapter-lora.gguf): written, quantised and checked against the HF model.

`verify_existing` checks them again for `ftcli export --verify-only`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ftcli.errors import BadInput
from ftcli.export import quantize as q
from ftcli.export import verify
from ftcli.export.gguf import write_gguf
from ftcli.export.lora_gguf import base_model_folder, write_lora_gguf
from ftcli.export.options import ExportOptions
from ftcli.export.report import REPORT, report_text
from ftcli.export.source import Source, hf_model_folder, run_template


def reference_once(model_dir: Path, template, log) -> Callable[[], verify.Reference]:
    """A callable giving the HF model's logits, computed on the first call and reused for every file checked."""
    refs: dict = {}

    def reference():
        if "ref" not in refs:
            log("computing reference logits with the Hugging Face model (float32)")
            refs["ref"] = verify.build_reference(model_dir, template)
        return refs["ref"]

    return reference


def write_lora(src: Source, tmp: Path, template, log, get_ref) -> dict:
    """adapter-lora.gguf, checked by applying it in llama.cpp to a GGUF of the base and comparing
    with the merged HF model."""
    base_dir = base_model_folder(src.base_name)
    path = tmp / "adapter-lora.gguf"
    log(f"writing {path.name} (LoRA for llama.cpp)")
    entry = {"format": "gguf-lora", **write_lora_gguf(src.adapter_dir, base_dir, path, name=src.name),
             "bytes": path.stat().st_size, "base_model": src.base_name}
    if get_ref is not None:
        scratch = Path(tempfile.mkdtemp(prefix=".base-gguf-", dir=tmp.parent))
        try:
            log("verifying it on an f16 GGUF of the base model against the merged HF model")
            base_gguf = write_gguf(base_dir, scratch / "base-f16.gguf", "f16").path
            entry["parity"] = verify.compare_logits(get_ref(), base_gguf, lora=path)
            entry["parity"]["applied_to"] = "f16 GGUF of the base model"
            verify.check_base(entry["parity"], f"{path.name} on the base GGUF")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return entry


def write_ggufs(model_dir: Path, tmp: Path, base: str, opts: ExportOptions, template, name: str, log,
                get_ref, run_root: Path | None = None) -> dict:
    """model-<base>.gguf from the weights, every other quant from it (with the shared calibration: imatrix,
    sensitivities), each checked when `get_ref` is given, then the quality report over all quants; the base
    file is removed again when it was not asked for."""
    from ftcli.export import quant_files

    base_path = tmp / f"model-{base}.gguf"
    log(f"writing {base_path.name}")
    info = write_gguf(model_dir, base_path, base, chat_template=template.source, end_of_turn=template.end_of_turn,
                      stop_tokens=list(template.stop_tokens), template_name=template.name, name=name)
    result: dict = {"gguf": {"arch": info.arch, "tokenizer_model": info.tokenizer_model,
                             "tokenizer_pre": info.tokenizer_pre, "tied_embeddings": info.tied_embeddings,
                             "add_bos": info.add_bos, "vocab_size": info.vocab_size, "notes": info.notes}}
    ref = get_ref() if get_ref is not None else None
    if ref is not None:
        result["tokenization"] = verify.compare_tokenization(ref, base_path)
    quants = [base] + [x for x in opts.gguf if x != base]
    shared = None
    if any(x not in q.BASE_TYPES for x in quants):
        shared = quant_files.prepare(model_dir, tmp, base_path, quants, opts.imatrix, template, run_root, log,
                                     opts.calibration_tokens)
        result["calibration"] = shared.report
    files = [_quant_file(tmp, base_path, base, quant, ref, log, shared, bool(opts.imatrix)) for quant in quants]
    if shared is not None:
        paths = {f["quant"]: tmp / f["file"] for f in files}
        figures = quant_files.quality(shared, base_path, paths, tmp / quant_files.PLOT, log)
        for f in files:
            f["quality"] = figures[f["quant"]]
        result["quality_plot"] = quant_files.PLOT
    if base not in opts.gguf:
        base_path.unlink()
        files[0]["kept"] = False
        files[0]["note"] = "intermediate: every quant was made from it, then it was removed"
    if ref is not None and not result["tokenization"]["chat_match"]:
        bad = next(s for s in result["tokenization"]["samples"] if s["kind"] == "chat" and not s["match"])
        raise verify.ParityFailed(f"llama.cpp tokenizes the rendered chat template differently from the HF tokenizer "
                                  f"(first difference: {bad.get('first_difference')})",
                                  hint="this is a tokenizer-export bug; please report it with the model's "
                                       "tokenizer.json")
    result["files"] = files
    return result


def _quant_file(tmp: Path, base_path: Path, base: str, quant: str, ref, log, shared=None,
                imatrix_asked: bool = False) -> dict:
    """The report entry of model-<quant>.gguf, quantised from the base file unless it is the base; the base
    must pass the parity gate."""
    from ftcli.export import quant_files

    path = tmp / f"model-{quant}.gguf"
    entry: dict = {"file": path.name, "format": "gguf", "quant": quant}
    if quant != base:
        plan, fell, extra = (quant_files.plan_for(shared, quant, imatrix_asked, log) if shared is not None
                             and quant not in q.BASE_TYPES else (None, [], {}))
        weighted = shared is not None and shared.imatrix is not None and (imatrix_asked or quant in q.DYNAMIC)
        log(f"quantising to {quant}" + (" with the importance matrix" if weighted else ""))
        qr = q.quantize(base_path, path, quant, plan=plan, imatrix=shared.imatrix if weighted else None)
        entry.update({"tensor_types": qr.tensor_types, "fallbacks": fell or qr.fallbacks, "imatrix": weighted,
                      **extra})
        if plan:
            entry["tensor_plan"] = plan
    else:
        entry["tensor_types"] = q.tensor_types(path)
        entry["fallbacks"] = []
    entry["bytes"] = path.stat().st_size
    if ref is not None:
        log(f"verifying {path.name} against the HF model")
        entry["parity"] = verify.compare_logits(ref, path)
        if quant == base:
            entry["parity"]["gate"] = f"nmse < {verify.BASE_NMSE_MAX:g} and top1 >= {verify.BASE_TOP1_MIN:.0%}"
            verify.check_base(entry["parity"], path.name)
    return entry


def verify_existing(src: Source, out: Path, opts: ExportOptions, log) -> dict:
    """Re-run the parity checks on the GGUF files of an existing export; update its report."""
    from transformers import AutoTokenizer

    ggufs = sorted(out.glob("model-*.gguf"))
    if not ggufs:
        raise BadInput(f"{out} holds no model-*.gguf to verify", hint="run ftcli export first (without --verify-only)")
    q.require_llama_cpp()
    report_path = out / REPORT
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {"files": []}
    holder: dict = {}

    def template_source(tokenizer):
        holder["t"] = run_template(src, tokenizer, opts.template)
        return holder["t"].source

    with hf_model_folder(src, template_source, None, log) as model_dir:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        template = holder.get("t") or run_template(src, tokenizer, opts.template)
        log("computing reference logits with the Hugging Face model (float32)")
        ref = verify.build_reference(model_dir, template)
        report["tokenization"] = verify.compare_tokenization(ref, ggufs[0])
        failures = _reverify_files(report, ggufs, ref, log)
    report["verified"] = _dt.datetime.now().isoformat(timespec="seconds")
    tmp = report_path.with_name(f".{REPORT}.tmp")
    tmp.write_text(report_text(report), encoding="utf-8")
    os.replace(tmp, report_path)
    report["out_dir"] = str(out)
    if failures:
        raise failures[0]
    if not report["tokenization"]["chat_match"]:
        raise verify.ParityFailed("llama.cpp tokenizes the rendered chat template differently from the HF tokenizer")
    return report


def _reverify_files(report: dict, ggufs: list[Path], ref: verify.Reference, log) -> list[verify.ParityFailed]:
    """Fresh parity figures in the report entry of every GGUF (added where missing); the base files' gate
    failures are returned, not raised, so the report is written first."""
    entries = {e.get("file"): e for e in report.get("files", [])}
    failures = []
    for path in ggufs:
        log(f"verifying {path.name}")
        entry = entries.setdefault(path.name, {"file": path.name, "format": "gguf",
                                               "quant": path.stem.removeprefix("model-")})
        entry["parity"] = verify.compare_logits(ref, path)
        if entry.get("quant") in q.BASE_TYPES:
            try:
                verify.check_base(entry["parity"], path.name)
            except verify.ParityFailed as err:
                failures.append(err)
    report["files"] = list(entries.values())
    return failures

