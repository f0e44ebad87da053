"""Fused LoRA MLP (gate, up, down + SwiGLU/GeGLU in one Function) vs PEFT + transformers' computation."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers.numerics import assert_close, close, launched

from ftcli.kernels import lora_mlp as lora_mlp_module
from ftcli.kernels.lora_mlp import lora_mlp, lora_mlp_reference

pytestmark = pytest.mark.usefixtures("interpret")

H, F, R = 24, 40, 4  # odd sizes, F not a power of two


def _inputs(dtype, adapter_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def proj(n_in, n_out, s):
        w = (torch.randn(n_out, n_in, generator=g) / n_in**0.5).to(dtype)
        a = (torch.randn(R, n_in, generator=g) / n_in**0.5).to(adapter_dtype).requires_grad_()
        b = (torch.randn(n_out, R, generator=g) * 0.5).to(adapter_dtype).requires_grad_()
        return (w, a, b, s, None)

    x = torch.randn(3, 7, H, generator=g).to(dtype).requires_grad_()
    dy = torch.randn(3, 7, H, generator=g).to(dtype)
    return x, proj(H, F, 2.0), proj(H, F, 0.5), proj(F, H, 1.0), dy


def _run(fn, activation, x, gate, up, down, dy):
    y = fn(x, activation, gate, up, down)
    y.backward(dy)
    leaves = [x, gate[1], gate[2], up[1], up[2], down[1], down[2]]
    out = [y.detach()] + [t.grad.detach().clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return out, y


NAMES = ("y", "dx", "dA_gate", "dB_gate", "dA_up", "dB_up", "dA_down", "dB_down")


@pytest.mark.parametrize("chunk_rows", [2048, 5], ids=["one-chunk", "rows-in-chunks-of-5"])
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
@pytest.mark.parametrize("dtype,adapter_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.bfloat16, torch.float32)],
                         ids=["fp32", "bf16", "bf16+fp32-adapters"])
def test_lora_mlp_matches_peft_and_saves_no_product(activation, dtype, adapter_dtype, chunk_rows, monkeypatch):
    """21 rows: in chunks of 5 the last chunk is short (the product and its gradient are made chunk by chunk)."""
    monkeypatch.setattr(lora_mlp_module, "CHUNK_ROWS", chunk_rows)
    x, gate, up, down, dy = _inputs(dtype, adapter_dtype)
    with launched(f"{activation}_fwd", f"{activation}_bwd", "lora_mlp"):
        ours, y = _run(lora_mlp, activation, x, gate, up, down, dy)
    ref, _ = _run(lora_mlp_reference, activation, x, gate, up, down, dy)
    for got, exp, what in zip(ours, ref, NAMES):
        assert got.dtype == exp.dtype, what
        assert_close(got, exp, dtype, what)


def test_lora_mlp_keeps_only_gate_and_up_outputs():
    """The product h = act(e) * g is recomputed in backward, not saved: two ffn-sized tensors, not three."""
    x, gate, up, down, _ = _inputs(torch.float32, torch.float32, seed=1)
    y = lora_mlp(x, "swiglu", gate, up, down)
    ffn_sized = [t for t in y.grad_fn.saved_tensors if t.shape[-1] == F and t.dim() == 2 and t.shape[0] == 21]
    assert len(ffn_sized) == 2


def test_mutation_wrong_activation_is_caught():
    """Negative control: Gemma's GeGLU computed as SwiGLU -> rejected."""
    x, gate, up, down, dy = _inputs(torch.float32, torch.float32, seed=2)
    ours, _ = _run(lora_mlp, "geglu", x, gate, up, down, dy)
    bug, _ = _run(lora_mlp_reference, "swiglu", x, gate, up, down, dy)
    assert not close(ours[0], bug[0], torch.float32)
    assert not close(ours[6], bug[6], torch.float32)  # dA_down depends on the recomputed product


def test_lora_mlp_qlora_nf4_bases():
    bnb = pytest.importorskip("bitsandbytes")
    x, gate, up, down, dy = _inputs(torch.float32, torch.float32, seed=3)

    def nf4(p):
        w, a, b, s, _ = p
        lin = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.float32, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
        lin = lin.to("cpu")
        return (lin.weight.data, a, b, s, lin.weight.quant_state)

    gate, up, down = nf4(gate), nf4(up), nf4(down)
    ours, _ = _run(lora_mlp, "swiglu", x, gate, up, down, dy)
    ref, _ = _run(lora_mlp_reference, "swiglu", x, gate, up, down, dy)
    for got, exp, what in zip(ours, ref, NAMES):
        assert_close(got, exp, torch.float32, what)


def test_output_unused_skips_the_down_projection_and_keeps_every_gradient(monkeypatch):
    """What a checkpoint's recompute gets: zeros that take no memory, and the same backward (the MLP output
    goes into a residual add, whose gradient does not depend on it)."""
    monkeypatch.setattr(lora_mlp_module, "CHUNK_ROWS", 5)
    x, gate, up, down, dy = _inputs(torch.float32, torch.float32, seed=4)
    leaves = [x, gate[1], gate[2], up[1], up[2], down[1], down[2]]

    def grads(unused: bool):
        with lora_mlp_module.output_unused() if unused else contextlib.nullcontext():
            y = lora_mlp(x, "swiglu", gate, up, down)
        (x + y).backward(dy)
        out = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return y, out

    y_skipped, skipped = grads(True)
    y, full = grads(False)
    assert y_skipped.shape == y.shape and y_skipped.stride() == (0, 0, 0) and not y_skipped.any()
    assert y.abs().sum() > 0
    for got, exp, what in zip(skipped, full, NAMES[1:]):
        assert torch.equal(got, exp), what
