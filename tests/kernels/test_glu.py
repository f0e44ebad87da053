"""SwiGLU and GeGLU (tanh): Triton (interpreted) vs transformers' `act_fn(gate) * up`."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_close, close, grads, launched

from ftcli.kernels.geglu import geglu, geglu_reference
from ftcli.kernels.swiglu import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference

pytestmark = pytest.mark.usefixtures("interpret")

SHAPE = (2, 5, 1100)  # F = 1100: two column blocks of 1024, the second masked


def _inputs(dtype, seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    e = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_()
    u = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    dh = torch.randn(shape, generator=g).to(dtype)
    return e, u, dh


def _run(fn, e, u, dh):
    h = fn(e, u)
    h.backward(dh)
    return (h, *grads(e, u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["swiglu", "geglu"])
def test_glu_forward_backward(dtype, name):
    fn, ref = {"swiglu": (swiglu, swiglu_reference), "geglu": (geglu, geglu_reference)}[name]
    e, u, dh = _inputs(dtype)
    with launched(f"{name}_fwd", f"{name}_bwd"):
        out = _run(fn, e, u, dh)
    expected = _run(ref, e, u, dh)
    for a, x, what in zip(out, expected, ("h", "dgate", "dup")):
        assert a.dtype == x.dtype
        assert_close(a, x, dtype, f"{name} {what}")
    if dtype == torch.bfloat16 and name == "swiglu":
        assert torch.equal(out[0], expected[0])  # same rounding points as HF: bitwise equal forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_packed_phi3(dtype):
    """Phi-3's fused gate_up_proj output [.., 2F]: strided halves in, one [.., 2F] gradient out."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 4, 2 * 70, generator=g) * 2).to(dtype).requires_grad_()
    dh = torch.randn(3, 4, 70, generator=g).to(dtype)
    with launched("swiglu_fwd", "swiglu_bwd"):
        h = swiglu_packed(x)
        h.backward(dh)
    (gx,) = grads(x)
    h_ref = swiglu_packed_reference(x)
    h_ref.backward(dh)
    (gx_ref,) = grads(x)
    assert_close(h, h_ref, dtype, "h")
    assert_close(gx, gx_ref, dtype, "dx")
    # negative control: gate and up swapped (the halves of gate_up_proj read the wrong way round)
    swapped = torch.cat(x.detach().chunk(2, dim=-1)[::-1], dim=-1)
    assert not close(h, swiglu_packed_reference(swapped), dtype)


def test_mutation_exact_gelu_instead_of_tanh_is_caught():
    """Negative control (fp32, where the two GELUs differ by ~1e-4): erf GELU is rejected."""
    e, u, dh = _inputs(torch.float32, seed=4)
    h = geglu(e, u)
    exact = torch.nn.functional.gelu(e.detach()) * u.detach()
    assert close(h, geglu_reference(e, u), torch.float32)
    assert not close(h, exact, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mutation_missing_silu_derivative_term_is_caught(dtype):
    """Negative control: de = dh * g * sigmoid(e) (the e * (1 - sigma) term dropped) is rejected."""
    e, u, dh = _inputs(dtype, seed=5)
    _, de, _ = _run(swiglu, e, u, dh)
    sig = torch.sigmoid(e.detach().float())
    de_bug = (dh.float() * u.detach().float() * sig).to(dtype)
    assert not close(de, de_bug, dtype)
