"""Fused linear cross-entropy and selected-token log-probs: Triton (interpreted) vs full-logit references."""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import assert_close, close, grads, launched

from ftcli.kernels import fused_linear_ce as flce
from ftcli.kernels import logit_rows
from ftcli.kernels.fused_linear_ce import (
    fused_linear_cross_entropy,
    fused_linear_cross_entropy_reference,
    selected_logprobs,
    selected_logprobs_reference,
)

pytestmark = pytest.mark.usefixtures("interpret")

B, T, H, V = 3, 7, 40, 1000  # vocab 1000: 4 tiles of 256 with the last one masked


@pytest.fixture(autouse=True)
def small_vocab_tiles(monkeypatch):
    monkeypatch.setattr(logit_rows, "BLOCK_V_MAX", 256)


def _inputs(dtype, seed=0, trainable=False, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.3).to(dtype).requires_grad_(trainable)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_(trainable) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100          # a prompt
    labels[1, :] = -100           # an all-ignored sequence
    with torch.no_grad():         # some labels are the argmax, for the accuracy output
        top = torch.nn.functional.linear(hidden, weight, b).argmax(-1)
    labels[2, 1::2] = top[2, 1::2]
    return hidden, weight, b, labels


def _ce(fn, hidden, weight, b, labels, **kw):
    loss, top1 = fn(hidden, weight, labels, b, return_is_top1=True, **kw)
    loss.backward()
    return loss, top1, grads(*[t for t in (hidden, weight, b) if t is not None and t.requires_grad])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 5.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("num_items", [None, 23], ids=["local-count", "num_items"])
def test_fused_ce_matches_reference(dtype, softcap, num_items):
    hidden, weight, b, labels = _inputs(dtype)
    n_items = None if num_items is None else torch.tensor(num_items)
    with launched("ce_rows"):
        loss, top1, (gh,) = _ce(fused_linear_cross_entropy, hidden, weight, b, labels, softcap=softcap,
                                num_items_in_batch=n_items, chunk_rows=4)
    loss_ref, top1_ref, (gh_ref,) = _ce(fused_linear_cross_entropy_reference, hidden, weight, b, labels,
                                        softcap=softcap, num_items_in_batch=n_items)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close(loss, loss_ref, dtype, "loss")
    assert_close(gh, gh_ref, dtype, "dhidden")
    assert torch.equal(gh[1], torch.zeros_like(gh[1]))  # ignored rows get exactly zero gradient
    if dtype == torch.float32:
        assert torch.equal(top1, top1_ref)
    assert top1[2, 1::2].all() and not top1[1].any()


def test_fused_ce_trainable_head_and_bias_and_logit_scale():
    hidden, weight, b, labels = _inputs(torch.float32, seed=1, trainable=True, bias=True)
    with launched("ce_rows"):
        loss, _, (gh, gw, gb) = _ce(fused_linear_cross_entropy, hidden, weight, b, labels, logit_scale=0.5,
                                    chunk_rows=5)
    loss_ref, _, (gh_ref, gw_ref, gb_ref) = _ce(fused_linear_cross_entropy_reference, hidden, weight, b, labels,
                                                logit_scale=0.5)
    for a, e, what in ((loss, loss_ref, "loss"), (gh, gh_ref, "dh"), (gw, gw_ref, "dW"), (gb, gb_ref, "db")):
        assert_close(a, e, torch.float32, what)


def test_fused_ce_all_ignored_is_a_differentiable_zero():
    hidden, weight, b, labels = _inputs(torch.float32, seed=2)
    labels[:] = -100
    loss = fused_linear_cross_entropy(hidden, weight, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_fused_ce_scales_by_upstream_gradient_and_never_builds_full_logits(monkeypatch):
    hidden, weight, b, labels = _inputs(torch.float32, seed=3)
    seen = []
    real_mm = flce.chunk_logits
    monkeypatch.setattr(flce, "chunk_logits", lambda h, w, bb: seen.append(h.shape[0]) or real_mm(h, w, bb))
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_rows=4)
    (3 * loss).backward()
    (gh,) = grads(hidden)
    (3 * fused_linear_cross_entropy_reference(hidden, weight, labels)).backward()
    (gh_ref,) = grads(hidden)
    assert_close(gh, gh_ref, torch.float32, "3 * dh")
    n_real = int((labels != -100).sum())
    assert max(seen) == 4 and sum(seen) == n_real  # chunks of 4 real rows; prompt rows never projected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mutation_skipping_num_items_division_is_caught(dtype):
    """Negative control: dividing by the local count when the trainer passed num_items_in_batch."""
    hidden, weight, b, labels = _inputs(dtype, seed=4)
    n_items = torch.tensor(3 * int((labels != -100).sum()))  # 3 micro-batches of this size in the step
    loss, _, (gh,) = _ce(fused_linear_cross_entropy, hidden, weight, b, labels, num_items_in_batch=n_items)
    loss_bug, _, (gh_bug,) = _ce(fused_linear_cross_entropy_reference, hidden, weight, b, labels)
    assert not close(loss, loss_bug, dtype)
    assert not close(gh, gh_bug, dtype)


ALL = ("log_probs", "entropy", "is_top1", "mean_logits", "log_sum_sq_probs")


def _lp(fn, hidden, weight, b, labels, ent_coef, **kw):
    out = fn(hidden, weight, labels, b, outputs=ALL, **kw)
    mask = labels != -100
    objective = -out["log_probs"].sum() / mask.sum() + ent_coef * out["entropy"].sum()
    objective.backward()
    return out, grads(*[t for t in (hidden, weight, b) if t is not None and t.requires_grad])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ent_coef", [0.0, 0.1], ids=["logp-grad", "logp+entropy-grad"])
def test_selected_logprobs_match_reference(dtype, ent_coef):
    hidden, weight, b, labels = _inputs(dtype, seed=5)
    kw = dict(temperature=0.7, softcap=4.0)
    with launched("ce_rows"):
        out, (gh,) = _lp(selected_logprobs, hidden, weight, b, labels, ent_coef, chunk_rows=3, **kw)
    ref, (gh_ref,) = _lp(selected_logprobs_reference, hidden, weight, b, labels, ent_coef, **kw)
    for name in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        assert out[name].dtype == torch.float32 and out[name].shape == labels.shape
        assert_close(out[name], ref[name], dtype, name)
    assert out["is_top1"].dtype == torch.bool
    if dtype == torch.float32:
        assert torch.equal(out["is_top1"], ref["is_top1"])
    assert_close(gh, gh_ref, dtype, "dhidden")
    assert not out["log_probs"][1].any()


def test_selected_logprobs_backward_is_a_row_scale_for_a_frozen_head():
    """The gradient is formed in the forward: backward launches no kernel unless entropy needs one."""
    from ftcli.kernels._triton import LAUNCHES

    hidden, weight, b, labels = _inputs(torch.float32, seed=6)
    out = selected_logprobs(hidden, weight, labels, outputs=("log_probs", "entropy"), chunk_rows=8)
    before = LAUNCHES["ce_rows"]
    (out["log_probs"].sum() + out["entropy"].detach().sum()).backward()
    assert LAUNCHES["ce_rows"] == before


def test_selected_logprobs_trainable_head():
    hidden, weight, b, labels = _inputs(torch.float32, seed=7, trainable=True, bias=True)
    out, (gh, gw, gb) = _lp(selected_logprobs, hidden, weight, b, labels, 0.0, chunk_rows=6)
    ref, (gh_ref, gw_ref, gb_ref) = _lp(selected_logprobs_reference, hidden, weight, b, labels, 0.0)
    for a, e, what in ((gh, gh_ref, "dh"), (gw, gw_ref, "dW"), (gb, gb_ref, "db")):
        assert_close(a, e, torch.float32, what)


def test_mutation_temperature_ignored_is_caught():
    hidden, weight, b, labels = _inputs(torch.float32, seed=8)
    out = selected_logprobs(hidden, weight, labels, temperature=0.7)
    bug = selected_logprobs_reference(hidden, weight, labels, temperature=1.0)
    assert not close(out["log_probs"], bug["log_probs"], torch.float32)
