"""`ftcli export`: from a run directory (or a model folder) to verified files in one folder.

    source (merged/ | model/ | adapter/ + 16-bit base) -> merged safetensors
      -> model-<base>.gguf (our writer) -> model-<quant>.gguf (llama.cpp quantiser)
      -> logits + tokenisation parity against the HF model -> Modelfile -> export-report.json

Everything is written into a temp folder beside the output folder and renamed into place
when complete; an existing export is replaced only with `overwrite`. Nothing here prints:
progress goes to the `log` callable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ftcli.errors import BadInput
from ftcli.export import quantize as q

REPORT = "export-report.json"
BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q4_k_m": 4.9, "q4_0": 4.5}


@dataclass
class ExportOptions:
    safetensors: bool = False
    gguf: list[str] = field(default_factory=list)
    ollama: bool = False
    adapter: bool = False
    adapter_gguf: bool = False       # the LoRA adapter as a GGUF LoRA that llama.cpp applies to the base GGUF
    out_dir: Path | None = None
    overwrite: bool = False
    verify: bool = True
    verify_only: bool = False
    system: str | None = None
    template: str | None = None  # override the run's chat template (family, auto or .jinja)


@dataclass
class Source:
    """What an export reads: a Hugging Face folder, or an adapter plus the base to merge it into."""
    kind: str                        # "run" or "model"
    root: Path                       # the run directory or the model folder
    model_dir: Path | None = None    # merged/ or model/ or the model folder itself
    adapter_dir: Path | None = None
    base_name: str | None = None
    dtype: str = "auto"
    load_in_4bit: bool = False
    template_name: str = "auto"
    system_prompt: str | None = None
    formats: list[str] = field(default_factory=list)
    gguf_quant: list[str] = field(default_factory=list)
    name: str = "model"


def resolve_source(target: Path) -> Source:
    """A run directory (recipe.resolved.yaml + merged/ | model/ | adapter/) or a HF model folder."""
    target = Path(target).expanduser()
    if not target.exists():
        raise BadInput(f"{target} does not exist", hint="give a run directory (runs/<name>-<timestamp>) or a model folder")
    manifest = target / "recipe.resolved.yaml"
    if manifest.is_file():
        data = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
        model, export = data.get("model") or {}, data.get("export") or {}
        src = Source(kind="run", root=target, base_name=model.get("name"), dtype=model.get("dtype", "auto"),
                     load_in_4bit=bool(model.get("load_in_4bit")),
                     template_name=str((data.get("template") or {}).get("name", "auto")),
                     system_prompt=(data.get("dataset") or {}).get("system_prompt"),
                     formats=list(export.get("formats") or []), gguf_quant=list(export.get("gguf_quant") or []),
                     name=target.name)
        for sub in ("merged", "model"):
            if (target / sub / "config.json").is_file():
                src.model_dir = target / sub
                break
        if (target / "adapter" / "adapter_config.json").is_file():
            src.adapter_dir = target / "adapter"
        if src.model_dir is None and src.adapter_dir is None:
            status = ((data.get("_run") or {}).get("status"))
            raise BadInput(f"run directory {target} has neither merged/, model/ nor adapter/"
                           + (f" (run status: {status})" if status else ""),
                           hint="export a run that finished training")
        return src
    if (target / "config.json").is_file():
        return Source(kind="model", root=target, model_dir=target, name=target.name)
    raise BadInput(f"{target} is neither a run directory (no recipe.resolved.yaml) nor a model folder (no config.json)")


def plan_formats(src: Source, opts: ExportOptions) -> ExportOptions:
    """No format flag given: GGUF (the recipe's export.gguf_quant, else q8_0) and a Modelfile."""
    if not (opts.safetensors or opts.gguf or opts.ollama or opts.adapter or opts.adapter_gguf or opts.verify_only):
        opts.ollama = True
    if opts.ollama and not opts.gguf:
        opts.gguf = q.parse_quants(src.gguf_quant or ["q8_0"])
    return opts


def torch_dtype(name: str):
    from ftcli.models import pretrained
    from ftcli.recipe import ModelSection

    return pretrained.pick_dtype(ModelSection(name="x", dtype=name if name in pretrained.DTYPES or name == "auto" else "auto"))


def run_template(src: Source, tokenizer, override: str | None):
    """The training chat template: the run's family (for its stop tokens) or the tokenizer's own."""
    from ftcli.data import templates

    name = override or src.template_name
    with contextlib.suppress(templates.ChatTemplateError):
        template = templates.resolve(name, tokenizer)
        # The template saved with the run wins over a family file edited since.
        saved = getattr(tokenizer, "chat_template", None)
        if override or not saved or saved == template.source:
            return template
    return templates.resolve("auto", tokenizer)


def _disk_check(out_parent: Path, model_dir: Path, opts: ExportOptions, base: str, copy: bool) -> None:
    """Refuse early when the files we are about to write cannot fit."""
    src_bytes, dtype_bytes = _size_of(model_dir)
    params = src_bytes / dtype_bytes
    need = src_bytes if copy else 0
    if opts.gguf:
        need += params * BITS[base] / 8 + sum(params * BITS[x] / 8 for x in opts.gguf if x != base)
    need = int(need * 1.05) + (64 << 20)
    free = shutil.disk_usage(out_parent).free
    if free < need:
        raise BadInput(f"not enough disk space in {out_parent}: the export needs about {need / 2**30:.1f} GiB, "
                       f"{free / 2**30:.1f} GiB are free", hint="free some space or pass --out on another disk")


def _size_of(model_dir: Path) -> tuple[int, int]:
    """(bytes of the safetensors, bytes per element of their dtype)."""
    total = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return total, 4 if "32" in dtype else 2


def _link_or_copy(src: Path, dst: Path) -> None:
    def copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=copy)


@contextlib.contextmanager
def _hf_model(src: Source, template_source_fn, keep_at: Path | None, log):
    """A HF folder with the merged model: merged/ or model/ as they are, else the adapter merged
    into the 16-bit base (for QLoRA: the original 16-bit weights, reloaded) at `keep_at` or a temp dir."""
    if src.model_dir is not None:
        yield src.model_dir
        return
    from transformers import AutoTokenizer

    from ftcli.export.merge import merge_adapter, save_merged

    if not src.base_name:
        raise BadInput(f"{src.root}/recipe.resolved.yaml names no model.name to merge the adapter into")
    log(f"merging {src.adapter_dir} into the 16-bit base {src.base_name}"
        + (" (QLoRA: the original 16-bit weights, not the 4-bit ones)" if src.load_in_4bit else ""))
    merged = merge_adapter(src.base_name, src.adapter_dir, torch_dtype(src.dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(src.adapter_dir))
    tmp = None
    if keep_at is None:
        tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=src.root))
        keep_at = tmp / "merged"
    try:
        save_merged(merged, tokenizer, template_source_fn(tokenizer), keep_at)
        del merged
        yield keep_at
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def export(target: Path, opts: ExportOptions, log: Callable[[str], None] = lambda _: None) -> dict:
    """Run an export (or, with opts.verify_only, re-verify an existing one); returns the report."""
    src = resolve_source(target)
    opts = plan_formats(src, opts)
    out = Path(opts.out_dir) if opts.out_dir else src.root / "export"
    if opts.verify_only:
        return verify_existing(src, out, opts, log)
    if opts.gguf:
        q.require_llama_cpp()
        try:
            import gguf  # noqa: F401
        except ImportError:
            from ftcli.errors import MissingPackage

            raise MissingPackage("gguf", "GGUF export", q.INSTALL) from None
    if (opts.adapter or opts.adapter_gguf) and src.adapter_dir is None:
        raise BadInput("--adapter/--adapter-gguf: this run has no adapter/ (a full finetune has no LoRA adapter)")
    if opts.adapter_gguf and not opts.gguf:
        q.require_llama_cpp()
    if not (opts.safetensors or opts.gguf or opts.adapter or opts.adapter_gguf):
        raise BadInput("nothing to export", hint="pass --safetensors, --gguf q8_0[,q4_k_m...], --ollama or --adapter")
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise BadInput(f"{out} already holds an export", hint="pass --overwrite to replace it, or --out DIR")
    out.parent.mkdir(parents=True, exist_ok=True)

    started = time.time()
    base = next((b for b in ("f16", "bf16", "f32") if b in opts.gguf), "f16")
    report: dict = {"ftcli_export": 1, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                    "source": {"kind": src.kind, "path": str(src.root), "base_model": src.base_name,
                               "merged_from_adapter": src.model_dir is None, "qlora": src.load_in_4bit},
                    "versions": _versions(), "files": [], "notes": []}
    from transformers import AutoTokenizer

    from ftcli.files import atomic_dir

    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)
        template_holder: dict = {}

        def template_source(tokenizer):
            template_holder["t"] = run_template(src, tokenizer, opts.template)
            return template_holder["t"].source

        keep = tmp / "merged" if opts.safetensors and src.model_dir is None else None
        with _hf_model(src, template_source, keep, log) as model_dir:
            _disk_check(out.parent, model_dir, opts, base, copy=opts.safetensors and keep is None)
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
                from ftcli.export import ollama
                from ftcli.export.vocab import adds_special

                strip_bos = adds_special(tokenizer, tokenizer.bos_token_id, first=True)
                modelfile = ollama.build_modelfile(f"model-{opts.gguf[0]}.gguf", template, tokenizer, strip_bos,
                                                   system=opts.system or src.system_prompt,
                                                   header=f"written by ftcli export from {src.root}")
            refs: dict = {}

            def reference():  # the HF model's logits, computed once for every file checked
                if "ref" not in refs:
                    from ftcli.export import verify

                    log("computing reference logits with the Hugging Face model (float32)")
                    refs["ref"] = verify.build_reference(model_dir, template)
                return refs["ref"]

            get_ref = reference if opts.verify else None
            if opts.gguf:
                report.update(_write_ggufs(model_dir, tmp, base, opts, template, src.name, log, get_ref))
            if opts.adapter_gguf:
                report["files"].append(_write_lora(src, tmp, template, log, get_ref))
            if modelfile is not None:
                (tmp / "Modelfile").write_text(modelfile.text, encoding="utf-8")
                report["files"].append({"file": "Modelfile", "format": "ollama", "from": f"model-{opts.gguf[0]}.gguf",
                                        "stops": modelfile.stops, "golden_conversations_checked":
                                        modelfile.golden_checked, "notes": modelfile.notes})
        if opts.adapter:
            _link_or_copy(src.adapter_dir, tmp / "adapter")
            report["files"].append({"file": "adapter/", "format": "peft-adapter"})
        report["seconds"] = round(time.time() - started, 1)
        (tmp / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report["out_dir"] = str(out)
    return report


def check_export_ready(section) -> None:
    """Before training: the recipe's export section can be honoured (quant names, packages)."""
    if {"gguf", "ollama"} & set(section.formats):
        q.parse_quants(section.gguf_quant or ["q8_0"])
        q.require_llama_cpp()
        try:
            import gguf  # noqa: F401
        except ImportError:
            from ftcli.errors import MissingPackage

            raise MissingPackage("gguf", "export.formats: gguf", q.INSTALL) from None


def export_after_training(run_dir: Path, section, log: Callable[[str], None] = lambda _: None) -> dict | None:
    """The GGUF/Ollama part of a recipe's export section, at the end of `ftcli train` (merged/ and
    adapter/ are the run's own), into RUN_DIR/export/."""
    formats = set(section.formats)
    if not {"gguf", "ollama"} & formats:
        return None
    opts = ExportOptions(gguf=q.parse_quants(section.gguf_quant or ["q8_0"]), ollama="ollama" in formats)
    return export(Path(run_dir), opts, log)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("ftcli", "transformers", "torch", "peft", "gguf", "llama_cpp_python"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name.replace("_python", "-python") if name == "llama_cpp_python" else name)
    return out


def _write_lora(src: Source, tmp: Path, template, log, get_ref) -> dict:
    """adapter-lora.gguf, checked by applying it in llama.cpp to a GGUF of the base and comparing
    with the merged HF model."""
    from ftcli.export import verify
    from ftcli.export.gguf import write_gguf
    from ftcli.export.lora_gguf import base_model_folder, write_lora_gguf

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


def _write_ggufs(model_dir: Path, tmp: Path, base: str, opts: ExportOptions, template, name: str, log,
                 get_ref) -> dict:
    from ftcli.export import verify
    from ftcli.export.gguf import write_gguf

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
    files = []
    for quant in [base] + [x for x in opts.gguf if x != base]:
        path = tmp / f"model-{quant}.gguf"
        entry: dict = {"file": path.name, "format": "gguf", "quant": quant}
        if quant != base:
            log(f"quantising to {quant}")
            qr = q.quantize(base_path, path, quant)
            entry.update({"tensor_types": qr.tensor_types, "fallbacks": qr.fallbacks})
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
        files.append(entry)
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


def verify_existing(src: Source, out: Path, opts: ExportOptions, log) -> dict:
    """Re-run the parity checks on the GGUF files of an existing export; update its report."""
    from transformers import AutoTokenizer

    from ftcli.export import verify

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

    with _hf_model(src, template_source, None, log) as model_dir:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        template = holder.get("t") or run_template(src, tokenizer, opts.template)
        log("computing reference logits with the Hugging Face model (float32)")
        ref = verify.build_reference(model_dir, template)
        report["tokenization"] = verify.compare_tokenization(ref, ggufs[0])
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
    report["verified"] = _dt.datetime.now().isoformat(timespec="seconds")
    tmp = report_path.with_name(f".{REPORT}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, report_path)
    report["out_dir"] = str(out)
    if failures:
        raise failures[0]
    if not report["tokenization"]["chat_match"]:
        raise verify.ParityFailed("llama.cpp tokenizes the rendered chat template differently from the HF tokenizer")
    return report


def report_summary(report: dict) -> list[dict]:
    """Rows for the console: file, size, parity figures."""
    rows = []
    for entry in report.get("files", []):
        p = entry.get("parity") or {}
        rows.append({"file": entry["file"], "bytes": entry.get("bytes"), "kept": entry.get("kept", True),
                     "max_abs_diff": p.get("max_abs_diff"), "nmse": p.get("nmse"),
                     "top1": p.get("top1_agreement"), "kl": p.get("kl_mean"),
                     "fallbacks": len(entry.get("fallbacks") or [])})
    return rows
