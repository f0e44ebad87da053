"""Quantise a 16-bit GGUF through llama.cpp's own quantiser (llama-cpp-python's `llama_model_quantize`).

Every quant type is made from the one f16/bf16/f32 base file, never from another quantised
file. llama.cpp picks a per-tensor type mix (e.g. q4_k_m keeps some tensors in q6_k) and
falls back to another type for tensors whose rows do not divide into the type's blocks
(256 values for k-quants, 32 for q8_0/q4_0): those fallbacks are reported per tensor.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.errors import BadInput, FtcliError
from ftcli.export.llamacpp import INSTALL, capture_llama_log, require_llama_cpp  # noqa: F401 (re-exported)

# name -> (llama_ftype, nominal ggml type of the matrices, block size of that type)
QUANT_TYPES: dict[str, tuple[int, str, int]] = {
    "f32": (0, "F32", 1),
    "f16": (1, "F16", 1),
    "bf16": (32, "BF16", 1),
    "q8_0": (7, "Q8_0", 32),
    "q6_k": (18, "Q6_K", 256),
    "q5_k_m": (17, "Q5_K", 256),
    "q4_k_m": (15, "Q4_K", 256),
    "q4_0": (2, "Q4_0", 32),
}
BASE_TYPES = ("f32", "f16", "bf16")


class QuantizeFailed(FtcliError):
    """llama.cpp refused or failed to quantise: exit 1 (the job ran and failed)."""


@dataclass
class QuantResult:
    path: Path
    quant: str
    bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)   # ggml type -> number of tensors
    fallbacks: list[dict] = field(default_factory=list)           # tensors not in the nominal block type
    log: list[str] = field(default_factory=list)


def parse_quants(spec) -> list[str]:
    """'q4_k_m,q8_0' or a list -> validated, de-duplicated, lower-case names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in QUANT_TYPES:
            raise BadInput(f"unknown GGUF quant type {item!r}", hint="supported: " + ", ".join(QUANT_TYPES))
        if name not in out:
            out.append(name)
    return out


def quantize(base: Path, out: Path, quant: str, threads: int | None = None) -> QuantResult:
    """Write `out` as `quant` from the 16-bit `base` (temp name, renamed when complete)."""
    llama_cpp = require_llama_cpp()
    (quant,) = parse_quants([quant])
    base, out = Path(base), Path(out)
    ftype = QUANT_TYPES[quant][0]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or max(1, os.cpu_count() or 1)
    with capture_llama_log() as lines:
        rc = llama_cpp.llama_model_quantize(str(base).encode(), str(tmp).encode(), ctypes.byref(params))
    log = "".join(lines).splitlines()
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        reason = [ln for ln in log if "error" in ln.lower() or "failed" in ln.lower()] or log[-3:]
        raise QuantizeFailed(f"llama.cpp could not quantise {base.name} to {quant}: " + " | ".join(reason).strip())
    os.replace(tmp, out)
    return QuantResult(path=out, quant=quant, bytes=out.stat().st_size, tensor_types=tensor_types(out),
                       fallbacks=parse_fallbacks(log),
                       log=[ln.strip() for ln in log if "warning" in ln.lower() and "falling back" not in ln])


_FALLBACK = re.compile(r"(?P<tensor>\S+)\s+- ncols\s+(?P<ncols>\d+) not divisible by\s+(?P<block>\d+) "
                       r"\(required for type\s+(?P<wanted>\S+)\).*-> falling back to\s+(?P<used>\S+)")


def parse_fallbacks(log: list[str]) -> list[dict]:
    """llama.cpp's per-tensor "falling back" warnings: tensor, row length, wanted and used type."""
    out = []
    for line in log:
        m = _FALLBACK.search(line)
        if m:
            out.append({"tensor": m["tensor"], "row_length": int(m["ncols"]), "block": int(m["block"]),
                        "wanted": m["wanted"].upper(), "used": m["used"].upper()})
    return out


def tensor_types(path: Path) -> dict[str, int]:
    """ggml type name -> number of tensors of that type in the file."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
