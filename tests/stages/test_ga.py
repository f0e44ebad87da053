"""Gradient accumulation is exact: batch 8 x GA 1 == batch 2 x GA 4, proven on the real runner.

Runs in float64 (as DESIGN.md's check does) so that the comparison is exact to rounding. The dataset's sequences differ in length several-fold, so micro-batches carry very different
numbers of trained tokens; the naive per-micro-batch mean weights them wrongly and must fail.
"""

import pytest
import torch

from ftcli.stages import sft
from helpers.ga import STEPS, max_weight_diff, run_once, update_size


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch_and_naive_mean_does_not(tmp_path, monkeypatch):
    big_w, big_losses = run_once(tmp_path, "b8ga1", 8, 1)
    acc_w, acc_losses = run_once(tmp_path, "b2ga4", 2, 4)
    monkeypatch.setattr(sft, "EXACT_GA", False)
    naive_w, naive_losses = run_once(tmp_path, "naive", 2, 4)

    assert len(big_losses) == len(acc_losses) == STEPS
    scale = update_size(big_w)
    assert scale > 1e-2  # the runs did move the weights
    # In float64 the two schedules agree to rounding (~1e-16); fp32 would leave ~2e-3 of padding-shape noise.
    tolerance = 1e-9 * scale
    exact_diff, naive_diff = max_weight_diff(big_w, acc_w), max_weight_diff(big_w, naive_w)
    print(f"update scale {scale:.3e}; exact GA diff {exact_diff:.3e}; naive GA diff {naive_diff:.3e}")
    assert exact_diff < tolerance
    assert naive_diff > 1e-2 * scale  # the naive mean is off by whole percents, far beyond 10x the tolerance
    assert torch.allclose(torch.tensor(big_losses), torch.tensor(acc_losses), rtol=1e-6)  # logged through fp32
    assert not torch.allclose(torch.tensor(big_losses[1:]), torch.tensor(naive_losses[1:]), rtol=1e-2)


@pytest.mark.slow
def test_gradient_accumulation_stays_exact_with_packing(tmp_path, monkeypatch):
    """Packed bins of mixed lengths (train.packing: true, on transformers' mask here): batch 4 x GA 1 equals
    batch 2 x GA 2, since the normaliser counts every trained token of the step; the naive mean does not."""
    packed = {"packing": True, "max_steps": 2}
    big_w, _ = run_once(tmp_path, "p-b4ga1", 4, 1, **packed)
    acc_w, _ = run_once(tmp_path, "p-b2ga2", 2, 2, **packed)
    monkeypatch.setattr(sft, "EXACT_GA", False)
    naive_w, _ = run_once(tmp_path, "p-naive", 2, 2, **packed)
    scale = update_size(big_w)
    exact_diff, naive_diff = max_weight_diff(big_w, acc_w), max_weight_diff(big_w, naive_w)
    print(f"packed: update scale {scale:.3e}; exact GA diff {exact_diff:.3e}; naive GA diff {naive_diff:.3e}")
    assert scale > 1e-2 and exact_diff < 1e-9 * scale
    assert naive_diff > 1e-3 * scale
