"""Helpers shared by the kernel tests (imported as `from test_kernels_util import ...`), and tests of the plumbing.

TRITON_INTERPRET: our kernels are built lazily at their first launch (kernels/_triton.py), so a
test only needs the variable set while it runs. Each kernel test module pulls in the autouse
`interpret` fixture below (monkeypatch.setenv, undone after every test): no conftest, nothing set
for other test files, and no subprocess.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ftcli import kernels
from ftcli.kernels import _triton

#: Largest accepted max|actual - expected| / max|expected| per dtype: fp32 rounding noise, and a
#: few bf16 ulps (bf16 has 8 bits of mantissa: one ulp is 2**-8 = 0.4 % relative).
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


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


# ---------------------------------------------------------------------------------------------
# Tests of the plumbing itself


def test_registry_lists_every_op_with_triton_and_reference():
    assert set(kernels.OPS) == {"rms_norm", "rope", "swiglu", "geglu", "fused_linear_ce", "lora_linear"}
    for name, op in kernels.OPS.items():
        assert callable(op.triton) and callable(op.reference), name
        assert op.triton.__name__ + "_reference" == op.reference.__name__, name


def test_triton_runnable_follows_interpreter_env(monkeypatch):
    assert kernels.triton_runnable("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.triton_runnable("cpu")
    assert kernels.triton_runnable() == torch.cuda.is_available()


def test_interpreter_rounds_bf16_like_the_gpu():
    """The interpreter shim: fp32 -> bf16 rounds to nearest even (stock Triton 3.x truncates)."""
    import triton
    import triton.language as tl

    def cast_kernel(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(Y + offs, tl.load(X + offs, mask=m).to(tl.bfloat16), mask=m)

    k = _triton.kernel(cast_kernel)
    x = torch.randn(5000) * 3
    y = torch.empty(5000, dtype=torch.bfloat16)
    with launched("cast_kernel"):
        k[(triton.cdiv(5000, 1024),)](x, y, 5000, BLOCK=1024)
    assert torch.equal(y, x.to(torch.bfloat16))


def test_float64_inputs_are_computed_in_float64():
    """The exact-GA tests run whole models in float64: every kernel must then stay exact to fp64 rounding."""
    from ftcli.kernels import fused_linear_ce, geglu, lora_linear, rms_norm, rope, swiglu

    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(3, 5, 40, generator=g, **f64)
    w = torch.randn(40, generator=g, **f64)
    tight = 1e-12
    truth = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)  # (HF itself casts to fp32)
    assert rel_err(rms_norm.rms_norm(x, w, 1e-6, gemma=True), truth) < tight
    assert rel_err(swiglu.swiglu(x, x.flip(-1)), swiglu.swiglu_reference(x, x.flip(-1))) < tight
    assert rel_err(geglu.geglu(x, x.flip(-1)), geglu.geglu_reference(x, x.flip(-1))) < tight
    q, k = torch.randn(2, 4, 5, 16, generator=g, **f64), torch.randn(2, 2, 5, 16, generator=g, **f64)
    cos, sin = torch.randn(2, 5, 16, generator=g, **f64), torch.randn(2, 5, 16, generator=g, **f64)
    assert rel_err(rope.rope(q, k, cos, sin)[1], rope.rope_reference(q, k, cos, sin)[1]) < tight
    W, A, B = (torch.randn(s, generator=g, **f64) for s in ((30, 40), (8, 40), (30, 8)))
    assert rel_err(lora_linear.lora_linear(x, W, A, B, 2.0), lora_linear.lora_linear_reference(x, W, A, B, 2.0)) < tight
    labels = torch.randint(0, 30, (3, 5), generator=g)
    got = fused_linear_ce.selected_logprobs(x, W, labels)["log_probs"]
    assert rel_err(got, fused_linear_ce.selected_logprobs_reference(x, W, labels)["log_probs"]) < tight
