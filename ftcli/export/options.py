"""The options of `ftcli export`: the formats chosen when none is given, and the disk space the files need."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.errors import BadInput
from ftcli.export import quantize as q
from ftcli.export.source import Source

BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q4_k_m": 4.9, "q4_0": 4.5,
        "q3_k_m": 3.9, "q2_k": 3.0, "dynamic-q4": 5.0, "dynamic-q3": 4.0, "dynamic-q2": 3.1}


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
    imatrix: str | None = None   # "auto" (the run's data) or a .jsonl of calibration text
    calibration_tokens: int = 32768


def plan_formats(src: Source, opts: ExportOptions) -> ExportOptions:
    """No format flag given: GGUF (the recipe's export.gguf_quant, else q8_0) and a Modelfile."""
    if not (opts.safetensors or opts.gguf or opts.ollama or opts.adapter or opts.adapter_gguf or opts.verify_only):
        opts.ollama = True
    if opts.ollama and not opts.gguf:
        opts.gguf = q.parse_quants(src.gguf_quant or ["q8_0"])
    return opts


def disk_check(out_parent: Path, model_dir: Path, opts: ExportOptions, base: str, copy: bool) -> None:
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
