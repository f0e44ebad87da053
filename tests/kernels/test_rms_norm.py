"""RMSNorm (Llama and Gemma casting) and fused add + RMSNorm: Triton (interpreted) vs the reference."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_close, close, grads, launched

from ftcli.kernels.rms_norm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference

pytestmark = pytest.mark.usefixtures("interpret")

H = 100  # not a power of two: the last block is masked


def _inputs(dtype, gemma, w_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, H, generator=g).mul(2).to(dtype).requires_grad_()
    w = (torch.randn(H, generator=g) * 0.3 + (0.0 if gemma else 1.0)).to(w_dtype or dtype).requires_grad_()
    dy = torch.randn(3, 7, H, generator=g).to(torch.promote_types(dtype, w.dtype) if not gemma else dtype)
    return x, w, dy


def _check_against_reference(x, w, dy, gemma, dtype):
    """Triton forward and backward (both kernels launched) against the reference; returns (y, y_ref)."""
    with launched("rms_norm_fwd", "rms_norm_bwd"):
        y = rms_norm(x, w, 1e-6, gemma)
        y.backward(dy)
    gx, gw = grads(x, w)
    y_ref = rms_norm_reference(x, w, 1e-6, gemma)
    y_ref.backward(dy)
    gx_ref, gw_ref = grads(x, w)
    assert y.dtype == y_ref.dtype
    assert_close(y, y_ref, dtype, "y")
    assert_close(gx, gx_ref, dtype, "dx")
    assert_close(gw, gw_ref, dtype, "dw")
    return y, y_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm_forward_backward(dtype, gemma):
    x, w, dy = _inputs(dtype, gemma)
    y, y_ref = _check_against_reference(x, w, dy, gemma, dtype)
    if dtype == torch.bfloat16:
        # Same rounding points as transformers: the bf16 forward is bitwise identical.
        assert torch.equal(y, y_ref)


def test_rms_norm_fp32_weight_bf16_input_and_frozen_weight():
    """PEFT's k-bit preparation upcasts norm weights to fp32: output is fp32 like HF's; no dw when frozen."""
    x, w, dy = _inputs(torch.bfloat16, False, w_dtype=torch.float32)
    w.requires_grad_(False)
    with launched("rms_norm_fwd", "rms_norm_bwd"):
        y = rms_norm(x, w, 1e-5)
        y.backward(dy)
    (gx,) = grads(x)
    y_ref = rms_norm_reference(x, w, 1e-5)
    y_ref.backward(dy)
    (gx_ref,) = grads(x)
    assert y.dtype == y_ref.dtype == torch.float32
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(gx, gx_ref, torch.bfloat16, "dx")
    assert w.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_add_rms_norm_forward_backward(dtype, gemma):
    x, w, dy = _inputs(dtype, gemma, seed=1)
    res = torch.randn(x.shape).to(dtype).requires_grad_()
    dh = torch.randn(x.shape).to(dtype)
    with launched("rms_norm_fwd", "rms_norm_bwd"):
        y, h = add_rms_norm(x, res, w, 1e-6, gemma)
        ((y.float() * dy.float()).sum() + (h.float() * dh.float()).sum()).backward()
    gx, gr, gw = grads(x, res, w)
    y_ref, h_ref = add_rms_norm_reference(x, res, w, 1e-6, gemma)
    ((y_ref.float() * dy.float()).sum() + (h_ref.float() * dh.float()).sum()).backward()
    gx_ref, gr_ref, gw_ref = grads(x, res, w)
    assert torch.equal(h, h_ref)
    assert_close(y, y_ref, dtype, "y")
    assert_close(gx, gx_ref, dtype, "dx")
    assert_close(gr, gr_ref, dtype, "dresidual")
    assert_close(gw, gw_ref, dtype, "dw")


def test_add_rms_norm_only_residual_output_used():
    x, w, _ = _inputs(torch.float32, False)
    res = torch.randn(x.shape, requires_grad=True)
    y, h = add_rms_norm(x, res, w, 1e-6)
    h.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x)) and torch.equal(res.grad, torch.ones_like(res))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mutation_dropping_gemma_plus_one_is_caught(dtype):
    """Negative control: the comparison above rejects a Gemma norm that forgot the `+ 1`."""
    x, w, dy = _inputs(dtype, True)
    y = rms_norm(x, w, 1e-6, gemma=True)
    y.backward(dy)
    (gx,) = grads(x)
    buggy = rms_norm_reference(x, w.float(), 1e-6, gemma=False).to(dtype)  # w instead of 1 + w, fp32 math
    buggy.backward(dy)
    (gx_bug,) = grads(x)
    assert not close(y, buggy, dtype)
    assert not close(gx, gx_bug, dtype)


@pytest.mark.parametrize("rows,width", [(200, 100), (37, 64), (5, 3000)],
                         ids=["tiles-several-per-program", "narrow-partial-tile", "wide-one-row-per-program"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm_row_tiles(rows, width, gemma):
    """Narrow rows (per-head q/k norms) are normalised many to a program, with the last tile part-empty and,
    with dw, several tiles per program; wide rows one to a program. Each row's result stays its own."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(rows, width, generator=g) * torch.linspace(0.1, 5, rows)[:, None]).requires_grad_()
    w = (torch.randn(width, generator=g) * 0.3 + (0.0 if gemma else 1.0)).requires_grad_()
    dy = torch.randn(rows, width, generator=g)
    _check_against_reference(x, w, dy, gemma, torch.float32)
