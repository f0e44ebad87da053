"""The llama-cpp-python boundary: import it (or say how to install it), capture llama.cpp's log,
and load a GGUF the way verification and `ftcli chat` need.

Loading uses llama.cpp's plain CPU weight buffers (`use_extra_bufts=False`): the repacked /
AMX buffer types of some builds crash on quantised models on AMX CPUs (seen with
llama-cpp-python 0.3.36 built natively on a Sapphire Rapids machine), and the plain path
computes the same products.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

from ftcli.errors import MissingPackage

INSTALL = 'CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install llama-cpp-python==0.3.36 gguf==0.19.0'


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingPackage("llama-cpp-python", "GGUF export (quantisation and verification)", INSTALL) from None
    return llama_cpp


@contextlib.contextmanager
def capture_llama_log():
    """Collect llama.cpp's log lines (its only channel for warnings and errors) instead of printing them."""
    llama_cpp = require_llama_cpp()
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):  # noqa: ARG001
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


class LoadFailed(Exception):
    def __init__(self, message: str, log: list[str]):
        super().__init__(message)
        self.log = log


def load(path: Path, n_ctx: int = 512, logits_all: bool = False, vocab_only: bool = False,
         threads: int | None = None, lora: Path | None = None):
    """A llama_cpp.Llama on the CPU with plain weight buffers (plus a LoRA GGUF); llama.cpp's log is kept quiet."""
    llama_cpp = require_llama_cpp()
    import llama_cpp.llama as llama_module

    default = llama_module.llama_cpp.llama_model_default_params

    def plain_params():
        params = default()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = plain_params
    try:
        with capture_llama_log() as lines:
            try:
                return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, vocab_only=vocab_only,
                                       n_gpu_layers=0, n_threads=threads or max(1, os.cpu_count() or 1),
                                       lora_path=str(lora) if lora else None, verbose=False)
            except (ValueError, RuntimeError) as err:
                raise LoadFailed(str(err), "".join(lines).splitlines()) from None
    finally:
        llama_module.llama_cpp.llama_model_default_params = default
