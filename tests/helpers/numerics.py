"""Numerical comparison helpers for the kernel and patch tests: relative error against a reference, the
tolerance per dtype, and a check that a Triton kernel really launched.

TRITON_INTERPRET: our kernels are built lazily at their first launch (kernels/_triton.py), so a test only
needs the variable set while it runs: the `interpret` fixture (tests/conftest.py) sets it per test.
"""

from __future__ import annotations

import contextlib

import torch

from ftcli.kernels import _triton

#: Largest accepted max|actual - expected| / max|expected| per dtype: fp32 rounding noise, and a
#: few bf16 ulps (bf16 has 8 bits of mantissa: one ulp is 2**-8 = 0.4 % relative).
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    scale = e.abs().max().clamp_min(1e-12) if e.numel() else torch.tensor(1.0, dtype=torch.float64)
    return ((a - e).abs().max() / scale).item() if e.numel() else 0.0


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    return rel_err(actual, expected) <= TOL[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.3g} ({dtype})"


@contextlib.contextmanager
def launched(*names: str):
    """Assert that each named Triton kernel was launched inside the block (the Triton path ran)."""
    before = {n: _triton.LAUNCHES[n] for n in names}
    yield
    for n in names:
        assert _triton.LAUNCHES[n] > before[n], f"Triton kernel {n} was not launched"


def grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [t.grad.detach().clone() if t.grad is not None else None for t in tensors]
    for t in tensors:
        t.grad = None
    return out
