"""Quantise a 16-bit GGUF through llama.cpp's own quantiser (llama-cpp-python's `llama_model_quantize`),
with a type for every tensor and, optionally, an importance matrix.

Every quant type is made from the one f16/bf16/f32 base file, never from another quantised
file. The per-tensor types come from a plan (quant_plan.py): llama.cpp's own mix for the
standard presets, the measured choice for the dynamic ones (dynamic.py). The plan reaches
llama.cpp as one exact-name tensor-type override per tensor and the importance matrix as
llama.cpp's `llama_model_imatrix_data` list, both plain C structs of llama.h, so the file is
written, tensor by tensor, by llama.cpp itself. Tensors whose rows do not divide into their
type's blocks (256 values for k-quants, 32 for q8_0/q4_0) fall back as llama.cpp would;
those fallbacks are reported per tensor.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    "q3_k_m": (12, "Q3_K", 256),
    "q2_k": (10, "Q2_K", 256),
    "dynamic-q4": (15, "Q4_K", 256),
    "dynamic-q3": (12, "Q3_K", 256),
    "dynamic-q2": (10, "Q2_K", 256),
}
BASE_TYPES = ("f32", "f16", "bf16")
DYNAMIC = ("dynamic-q4", "dynamic-q3", "dynamic-q2")


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
    plan: dict[str, str] = field(default_factory=dict)            # tensor -> ggml type, as written


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


def quantize(base: Path, out: Path, quant: str, threads: int | None = None, plan: dict[str, str] | None = None,
             imatrix: dict[str, np.ndarray] | None = None) -> QuantResult:
    """Write `out` as `quant` from the 16-bit `base` (temp name, renamed when complete).

    `plan` (tensor name -> ggml type) defaults to llama.cpp's own mix for `quant`; `imatrix`
    maps tensor names to the per-column mean of squared activations.
    """
    from ftcli.export import quant_plan

    llama_cpp = require_llama_cpp()
    (quant,) = parse_quants([quant])
    base, out = Path(base), Path(out)
    fallbacks: list[dict] = []
    if plan is None and quant in quant_plan.FTYPES:
        info = quant_plan.read_base(base)
        if any(t.type not in ("F16", "BF16", "F32") for t in info.tensors):
            raise QuantizeFailed(f"llama.cpp could not quantise {base.name} to {quant}: it holds quantised tensors "
                                 "(requantizing is refused: quantise from the 16-bit file)")
        plan, fallbacks = quant_plan.with_fallbacks(info, quant_plan.wanted_types(info, quant, imatrix is not None))
    if quant in DYNAMIC and plan is None:
        raise ValueError(f"{quant} needs a measured plan (ftcli.export.dynamic)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant][0]
    params.nthread = threads or max(1, os.cpu_count() or 1)
    keep = _attach(llama_cpp, params, plan or {}, imatrix or {})  # noqa: F841 (the C side points into these)
    with capture_llama_log() as lines:
        rc = llama_cpp.llama_model_quantize(str(base).encode(), str(tmp).encode(), ctypes.byref(params))
    log = "".join(lines).splitlines()
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        reason = [ln for ln in log if "error" in ln.lower() or "failed" in ln.lower()] or log[-3:]
        raise QuantizeFailed(f"llama.cpp could not quantise {base.name} to {quant}: " + " | ".join(reason).strip())
    os.replace(tmp, out)
    types = tensor_types(out)
    return QuantResult(path=out, quant=quant, bytes=out.stat().st_size, tensor_types=types,
                       fallbacks=fallbacks or parse_fallbacks(log), plan=dict(plan or {}),
                       log=[ln.strip() for ln in log if "warning" in ln.lower() and "falling back" not in ln
                            and "manual override" not in ln])


def _attach(llama_cpp, params, plan: dict[str, str], imatrix: dict[str, np.ndarray]) -> list:
    """Point `params` at C arrays of one exact-name type override per tensor and the imatrix rows; returns
    the Python objects that own that memory (they must outlive the call)."""
    from ftcli.export.ggml import type_id

    keep: list = []
    if plan:
        arr = (llama_cpp.llama_model_tensor_override * (len(plan) + 1))()
        for i, (name, qtype) in enumerate(plan.items()):
            pattern = ("^" + re.escape(name) + "$").encode()
            keep.append(pattern)
            arr[i].pattern, arr[i].type = pattern, type_id(qtype)
        arr[len(plan)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            encoded = name.encode()
            keep += [values, encoded]
            arr[i].name, arr[i].size = encoded, values.size
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[len(imatrix)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    return keep


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
