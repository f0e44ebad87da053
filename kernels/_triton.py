"""Shared Triton plumbing for the ops in this package: lazy kernels, launch counters, interpreter fixes.

Triton decides at decoration time whether `@triton.jit` builds a GPU kernel or a CPU-interpreted
one (it reads `TRITON_INTERPRET` then). Our kernels are therefore declared with `@kernel`, which
keeps the plain Python function and builds the Triton object on the first launch, in whichever
mode the process is in at that moment. A test can so set `TRITON_INTERPRET=1` after import.

Rules for kernels declared here (they keep the GPU and the interpreter in step):
- no calls to other jitted helpers (inline the math);
- upcast loaded values to fp32 before any arithmetic (the interpreter stores bf16 as raw uint16);
- store with `.to(ptr.dtype.element_ty)`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import types
from typing import Callable

import torch

#: How many times each kernel was launched in this process (tests assert the Triton path ran).
LAUNCHES: collections.Counter = collections.Counter()

_TRUE = ("1", "true", "on", "yes")


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def triton_runnable(device: torch.device | str | None = None) -> bool:
    """Whether our Triton kernels can run for tensors on `device` (default: where training would run).

    CUDA tensors need a CUDA device; CPU tensors need the interpreter (`TRITON_INTERPRET=1`).
    """
    if not triton_importable():
        return False
    if device is None:
        return interpreting() or torch.cuda.is_available()
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and not interpreting()
    if device.type == "cpu":
        return interpreting()
    return False


def acc_type(*tensors: torch.Tensor):
    """Triton compute dtype for a kernel: fp32, or fp64 when an input is fp64 (the exact-GA tests run
    whole models in float64 and must stay exact to rounding there)."""
    import triton.language as tl

    return tl.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else tl.float32


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def num_warps_for(block: int) -> int:
    """Warps for a row kernel whose widest tile has `block` elements."""
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


class kernel:  # noqa: N801 - used as a decorator
    """`@kernel` = `@triton.jit`, built at first launch; `k[grid](...)` launches and counts.

    `configs` (a list of `triton.Config`) and `key` turn on autotuning on the GPU; under the
    interpreter `interpret_meta` (default: the first config's meta-parameters) is used instead,
    since autotuning there would only be slow.
    """

    def __init__(self, fn: Callable | None = None, *, configs: list | None = None, key: list[str] | None = None,
                 interpret_meta: dict | None = None):
        self.configs, self.key = configs, key
        self.interpret_meta = interpret_meta if interpret_meta is not None else (
            dict(configs[0].kwargs) if configs else {})
        self._built: dict[bool, object] = {}
        self.fn = None
        if fn is not None:
            self._set(fn)

    def _set(self, fn: Callable) -> None:
        self.fn = fn
        self.name = fn.__name__
        functools.update_wrapper(self, fn)

    def __call__(self, fn: Callable) -> "kernel":  # @kernel(configs=...) form
        self._set(fn)
        return self

    def build(self):
        interp = interpreting()
        built = self._built.get(interp)
        if built is None:
            import triton

            if interp:
                patch_interpreter()
            built = triton.jit(self.fn)
            if self.configs and not interp:
                built = triton.autotune(configs=self.configs, key=self.key or [])(built)
            self._built[interp] = built
        return built

    def __getitem__(self, grid):
        built = self.build()
        LAUNCHES[self.name] += 1
        if not interpreting():
            return built[grid]
        launcher = built[grid]
        defaults = self.interpret_meta

        def run(*args, **kwargs):
            with _interpreted_stdlib():
                return launcher(*args, **{**defaults, **kwargs})

        return run


_STDLIB_MODULES = ("triton.language", "triton.language.standard", "triton.language.random")
_INTERPRETED: dict = {}


@contextlib.contextmanager
def _interpreted_stdlib():
    """Point triton.language's jitted helpers (tl.sum, tl.max, tl.sigmoid, ...) at interpreted twins.

    Those helpers were decorated when `triton.language` was first imported; if TRITON_INTERPRET
    was unset then (e.g. transformers imported Triton before a test set the variable), they are
    GPU-only JITFunctions that the interpreter cannot call. For the duration of one interpreted
    launch they are swapped for plain calls of their interpreter-rewritten source, then put back.
    (The language itself is patched once for the launch: the interpreter's own nested-call path
    re-patches it on every tl.sum call, which made our kernels several times slower.)
    """
    import sys

    import triton.language as tl
    from triton.runtime import interpreter as itp
    from triton.runtime.jit import JITFunction

    swapped = []
    for mod_name in _STDLIB_MODULES:
        namespace = vars(sys.modules[mod_name]) if mod_name in sys.modules else {}
        for key, value in list(namespace.items()):
            if isinstance(value, (JITFunction, itp.InterpretedFunction)):
                twin = _INTERPRETED.get(value)
                if twin is None:  # rewritten now, before the language is patched (the rewriter needs it plain)
                    twin = _INTERPRETED[value] = _twin(itp.InterpretedFunction(value.fn))
                swapped.append((namespace, key, value, twin))
    for namespace, key, _, twin in swapped:
        namespace[key] = twin
    probe = types.FunctionType(compile("def probe(): pass", "<ftcli>", "exec").co_consts[0],
                               {"tl": tl, "core": tl.core})
    scope = itp._patch_lang(probe)
    try:
        yield
    finally:
        scope.restore()
        for namespace, key, value, _ in swapped:
            namespace[key] = value


def _twin(interpreted):
    rewritten = interpreted.rewrite()

    def call(*args, **kwargs):
        return rewritten(*args, **kwargs)

    call.__name__ = interpreted.fn.__name__
    call.fn = interpreted.fn  # what code that re-wraps stdlib helpers (e.g. gluon's import) looks for
    return call


_INTERPRETER_PATCHED = False


def patch_interpreter() -> None:
    """Make Triton's CPU interpreter round and multiply bf16 the way the GPU does.

    Triton 3.x's interpreter converts fp32 -> bf16 by truncation (the GPU rounds to nearest
    even) and runs `tl.dot` on bf16 operands as uint16 integers. Both would make a CPU test
    compare the wrong thing, so the interpreter's builder gets a correct conversion (through
    torch) and upcasts bf16 dot operands to fp32 (exact: bf16 products fit fp32, and the GPU
    accumulates them in fp32 too). Only the interpreter is touched; GPU kernels are not.
    """
    global _INTERPRETER_PATCHED
    if _INTERPRETER_PATCHED:
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as itp

    builder_cls = itp.InterpreterBuilder
    orig_cast = builder_cls.cast_impl
    orig_fp_to_fp = builder_cls.create_fp_to_fp
    orig_dot = builder_cls.create_dot

    def to_bf16_bits(data):
        t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint16)

    def bf16_to_f32(data):
        return (data.astype(np.uint32) << 16).view(np.float32)

    def cast_impl(self, src, dst_type):
        s, d = src.dtype.scalar, dst_type.scalar
        if d == tl.bfloat16 and s != tl.bfloat16:
            f32 = bf16_to_f32(src.data) if s == tl.bfloat16 else src.data.astype(np.float32)
            return itp.TensorHandle(to_bf16_bits(f32), tl.bfloat16)
        return orig_cast(self, src, dst_type)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar in (tl.float32, tl.float16, tl.float64):
            return itp.TensorHandle(to_bf16_bits(src.data.astype(np.float32)), tl.bfloat16)
        return orig_fp_to_fp(self, src, dst_type, rounding_mode)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = itp.TensorHandle(bf16_to_f32(a.data), tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = itp.TensorHandle(bf16_to_f32(b.data), tl.float32)
        return orig_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder_cls.cast_impl = cast_impl
    builder_cls.create_fp_to_fp = create_fp_to_fp
    builder_cls.create_dot = create_dot
    _INTERPRETER_PATCHED = True
