"""ggml's own quantiser, called through ctypes from the library llama-cpp-python already loads.

`quantize_rows` runs `ggml_quantize_chunk` (the exact routine llama.cpp's quantiser calls per
tensor, importance matrix included); `fake_quantize` quantises and dequantises a matrix so the
sensitivity pass can measure what a type does to the model's outputs. Type names are ggml's
(`Q4_K`, `Q6_K`, `Q8_0`, `F16`, ...); block sizes and bytes come from the `gguf` package.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ftcli.export.llamacpp import require_llama_cpp


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    llama_cpp = require_llama_cpp()
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.ggml_quantize_chunk
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_void_p]
        fn.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_row_size.restype = ctypes.c_size_t
        return lib
    raise RuntimeError(f"no ggml library with ggml_quantize_chunk in {lib_dir}")


def type_id(name: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[name.upper()])


def block_of(name: str) -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]


def tensor_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of `shape` (numpy order: rows first, row length last) stored as `name`."""
    block, size = block_of(name)
    n = int(np.prod(shape))
    return n // block * size


def quantize_rows(w: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """`w` (rows x row length, float32) quantised by ggml to `qtype`: the raw bytes llama.cpp would write."""
    lib = _lib()
    w = np.ascontiguousarray(w, dtype=np.float32)
    nrows, n_per_row = w.shape
    tid = type_id(qtype)
    out = np.empty(int(lib.ggml_row_size(tid, n_per_row)) * nrows, dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imat = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imat.shape != (n_per_row,):
            raise ValueError(f"imatrix has {imat.shape} values for rows of {n_per_row}")
    row_bytes = out.size // max(1, nrows)
    imat_ptr = None if imat is None else imat.ctypes.data

    def run(first: int, last: int) -> int:  # rows are independent; ctypes releases the GIL during the call
        return lib.ggml_quantize_chunk(tid, w.ctypes.data + first * n_per_row * 4, out.ctypes.data + first * row_bytes,
                                       0, last - first, n_per_row, imat_ptr)

    threads = max(1, min(os.cpu_count() or 1, nrows // 64))
    bounds = [(nrows * i // threads, nrows * (i + 1) // threads) for i in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        written = sum(pool.map(lambda b: run(*b), bounds))
    if written != out.size:
        raise RuntimeError(f"ggml wrote {written} bytes for {qtype}, expected {out.size}")
    return out


class _Traits(ctypes.Structure):
    """ggml.h's `struct ggml_type_traits` (checked against the type's known name and sizes before use)."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.lru_cache(maxsize=None)
def _to_float(qtype: str):
    """ggml's own dequantiser for `qtype`, or None when the struct layout does not check out."""
    lib = _lib()
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    traits = lib.ggml_get_type_traits(type_id(qtype)).contents
    block, size = block_of(qtype)
    if (traits.type_name or b"").decode().upper() != qtype.upper() or (traits.blck_size, traits.type_size) != (
            block, size) or not traits.to_float:
        return None
    return _TO_FLOAT(traits.to_float)


def dequantize(data: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    import gguf

    t = gguf.GGMLQuantizationType[qtype.upper()]
    if t in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return data.view(np.float32 if t == gguf.GGMLQuantizationType.F32 else np.float16).astype(np.float32).reshape(shape)
    fn = _to_float(qtype.upper())
    if fn is None:
        return gguf.quants.dequantize(data.reshape(shape[0], -1), t).astype(np.float32).reshape(shape)
    data = np.ascontiguousarray(data)
    out = np.empty(int(np.prod(shape)), dtype=np.float32)
    fn(data.ctypes.data, out.ctypes.data, out.size)
    return out.reshape(shape)


def fake_quantize(w: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """`w` after a round trip through `qtype` (after the f16 rounding of the base GGUF), as float32."""
    w16 = np.asarray(w, dtype=np.float32).astype(np.float16).astype(np.float32)
    if qtype.upper() == "F16":
        return w16
    return dequantize(quantize_rows(w16, qtype, imatrix), qtype, w16.shape)
