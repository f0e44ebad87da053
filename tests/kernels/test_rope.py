"""RoPE on q and k together: Triton (interpreted) vs transformers' apply_rotary_pos_emb."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_close, close, grads, launched

from ftcli.kernels.rope import rope, rope_reference

pytestmark = pytest.mark.usefixtures("interpret")

B, HQ, HK, T, D = 2, 6, 2, 5, 24  # GQA 3:1, head_dim 24: half 12 is not a power of two


def _table(positions: int, rot: int, dtype, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _qk(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # HF layout: [B, T, H, D] projections viewed as [B, H, T, D] (non-contiguous)
    q = torch.randn(B, T, HQ, D, generator=g).to(dtype).transpose(1, 2).requires_grad_()
    k = torch.randn(B, T, HK, D, generator=g).to(dtype).transpose(1, 2).requires_grad_()
    dq = torch.randn(B, HQ, T, D, generator=g).to(dtype)
    dk = torch.randn(B, HK, T, D, generator=g).to(dtype)
    return q, k, dq, dk


def _run(fn, q, k, dq, dk, *args):
    qo, ko = fn(q, k, *args)
    ((qo.float() * dq.float()).sum() + (ko.float() * dk.float()).sum()).backward()
    return (qo, ko, *grads(q, k))


# packed batch: position ids restart at 0 for each document, arbitrary per row
POSITIONS = torch.tensor([[0, 1, 2, 0, 1], [7, 3, 0, 1, 2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rot", [D, 16], ids=["full", "partial"])
def test_rope_gathered_cos_sin(dtype, rot):
    """cos/sin as a transformers rotary embedding returns them: [B, T, R], already indexed by position."""
    q, k, dq, dk = _qk(dtype)
    cos_t, sin_t = _table(16, rot, dtype)
    cos, sin = cos_t[POSITIONS], sin_t[POSITIONS]
    with launched("rope_qk"):
        out = _run(rope, q, k, dq, dk, cos, sin)
    ref = _run(rope_reference, q, k, dq, dk, cos, sin)
    for a, e, what in zip(out, ref, ("q", "k", "dq", "dk")):
        assert a.shape == e.shape
        assert_close(a, e, dtype, what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_position_ids_table(dtype):
    q, k, dq, dk = _qk(dtype, seed=1)
    cos_t, sin_t = _table(16, D, dtype)
    with launched("rope_qk"):
        out = _run(rope, q, k, dq, dk, cos_t, sin_t, POSITIONS)
    ref = _run(rope_reference, q, k, dq, dk, cos_t, sin_t, POSITIONS)
    for a, e, what in zip(out, ref, ("q", "k", "dq", "dk")):
        assert_close(a, e, dtype, what)
    # broadcast position ids [1, T] and cos [1, T, R]
    pos1 = POSITIONS[:1]
    out = _run(rope, q, k, dq, dk, cos_t, sin_t, pos1)
    ref = _run(rope_reference, q, k, dq, dk, cos_t[pos1], sin_t[pos1])
    for a, e, what in zip(out, ref, ("q", "k", "dq", "dk")):
        assert_close(a, e, dtype, what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mutation_shifted_positions_are_caught(dtype):
    """Negative control: positions off by one (a classic packing bug) fail the comparison."""
    q, k, dq, dk = _qk(dtype, seed=2)
    cos_t, sin_t = _table(16, D, dtype)
    out = _run(rope, q, k, dq, dk, cos_t, sin_t, POSITIONS)
    bug = _run(rope_reference, q, k, dq, dk, cos_t, sin_t, POSITIONS + 1)
    assert not close(out[0], bug[0], dtype)
    assert not close(out[2], bug[2], dtype)
    # and the backward must rotate by -theta: using the forward rotation for the gradient is caught
    bug_dq = rope_reference(dq, dk, cos_t, sin_t, POSITIONS)[0]
    assert not close(out[2], bug_dq, dtype)
