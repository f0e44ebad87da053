"""Fused LoRA linear (plain and QLoRA NF4 base weights): our autograd Function vs PEFT's computation."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_close, close, grads

from ftcli.kernels import lora_linear as ll
from ftcli.kernels.lora_linear import lora_linear, lora_linear_reference

IN, OUT, R = 40, 52, 6  # odd sizes: every tile edge is masked; r < 16


def _inputs(dtype, adapter_dtype=None, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, IN, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(OUT, IN, generator=g) / IN**0.5).to(dtype)
    a = (torch.randn(R, IN, generator=g) / IN**0.5).to(adapter_dtype or dtype).requires_grad_()
    b = (torch.randn(OUT, R, generator=g) * 0.5).to(adapter_dtype or dtype).requires_grad_()
    bb = (torch.randn(OUT, generator=g) * 0.1).to(dtype) if bias else None
    dy = torch.randn(2, 9, OUT, generator=g).to(dtype)
    return x, w, a, b, bb, dy


def _run(fn, x, w, a, b, bb, dy, scaling, quant_state=None):
    y = fn(x, w, a, b, scaling, bb, quant_state)
    if fn is lora_linear:  # our Function ran (not the reference compared with itself)
        assert type(y.grad_fn).__name__ == "LoRALinearFunctionBackward"
    y.backward(dy)
    return (y, *grads(x, a, b))


@pytest.mark.parametrize("dtype,adapter_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.bfloat16, torch.float32)],
                         ids=["fp32", "bf16", "bf16+fp32-adapters"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_lora_linear_matches_peft_math(dtype, adapter_dtype, bias):
    x, w, a, b, bb, dy = _inputs(dtype, adapter_dtype, bias=bias)
    out = _run(lora_linear, x, w, a, b, bb, dy, 2.0)
    ref = _run(lora_linear_reference, x, w, a, b, bb, dy, 2.0)
    for got, exp, what in zip(out, ref, ("y", "dx", "dA", "dB")):
        assert got.dtype == exp.dtype, what
        assert_close(got, exp, dtype, what)


def test_lora_linear_qlora_nf4_base():
    """QLoRA: the NF4 weight is dequantised (into the shared buffer) in forward and again in backward."""
    bnb = pytest.importorskip("bitsandbytes")
    x, w, a, b, _, dy = _inputs(torch.float32, seed=1)
    lin = bnb.nn.Linear4bit(IN, OUT, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
    lin = lin.to("cpu")
    packed, qs = lin.weight.data, lin.weight.quant_state
    out = _run(lora_linear, x, packed, a, b, None, dy, 0.5, qs)
    ref = _run(lora_linear_reference, x, packed, a, b, None, dy, 0.5, qs)
    for got, exp, what in zip(out, ref, ("y", "dx", "dA", "dB")):
        assert_close(got, exp, torch.float32, what)
    # the buffer is shared and sized for the weight; the layer output equals bnb's own forward + LoRA
    assert any(buf.numel() >= IN * OUT for buf in ll._BUFFERS.values())
    with torch.no_grad():
        bnb_out = lin(x) + (x @ a.t() @ b.t()) * 0.5
    assert_close(out[0], bnb_out, torch.float32, "vs bitsandbytes Linear4bit")


def test_lora_linear_frozen_input_and_adapter_grads_only():
    x, w, a, b, _, dy = _inputs(torch.float32, seed=2)
    x.requires_grad_(False)
    y = lora_linear(x, w, a, b, 1.0)
    y.backward(dy)
    ga, gb = grads(a, b)
    lora_linear_reference(x, w, a, b, 1.0).backward(dy)
    ga_ref, gb_ref = grads(a, b)
    assert_close(ga, ga_ref, torch.float32, "dA")
    assert_close(gb, gb_ref, torch.float32, "dB")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mutation_wrong_scaling_is_caught(dtype):
    """Negative control: alpha/r vs alpha/sqrt(r) (rsLoRA) mixed up -> rejected."""
    x, w, a, b, _, dy = _inputs(dtype, seed=3)
    out = _run(lora_linear, x, w, a, b, None, dy, 16 / R)
    bug = _run(lora_linear_reference, x, w, a, b, None, dy, 16 / R**0.5)
    assert not close(out[0], bug[0], dtype)
    assert not close(out[3], bug[3], dtype)
