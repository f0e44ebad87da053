"""Gradient accumulation is exact: batch 8 x GA 1 == batch 2 x GA 4, proven on the real runner.

Runs in float64 (as DESIGN.md's check does) so that the comparison is exact to rounding. The dataset's sequences differ in length several-fold, so micro-batches carry very different
numbers of trained tokens; the naive per-micro-batch mean weights them wrongly and must fail.
"""

import pytest
import torch
from safetensors.torch import load_file

from ftcli import recipe
from ftcli.runner import rundir
from ftcli.runner import train as training
from ftcli.stages import sft
from support import conversation, write_jsonl, write_recipe

STEPS = 3


def varlen_rows():
    rows = []
    for i in range(STEPS * 8):
        repeats = 40 if i % 5 == 0 else 1 + i % 3  # most replies short, a few ~30x longer
        reply = " ".join(["the answer is", str(i)] * repeats)
        rows.append(conversation(f"Question {i}: please answer.", reply))
    return rows


def ga_recipe(tmp_path, name, batch, accum):
    """The GA comparison recipe: float64, plain SGD, constant LR, no clipping, on the variable-length rows."""
    data = write_jsonl(tmp_path / "varlen.jsonl", varlen_rows())
    return write_recipe(
        tmp_path / f"{name}.yaml",
        model={"name": "builtin:tiny-llama3", "max_seq_length": 512, "dtype": "float64"},
        dataset={"path": str(data), "format": "messages"},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={"max_steps": STEPS, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
               "optim": "sgd", "learning_rate": 0.2, "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
               "logging_steps": 1, "seed": 7},
        output_dir=str(tmp_path / name),
    )


def read_run(run_dir):
    """(LoRA weights, logged losses) of a finished run, read back from its directory."""
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    losses = [m["loss"] for m in rundir.read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    return weights, losses


def run_once(tmp_path, name, batch, accum):
    result = training.run(recipe.load(ga_recipe(tmp_path, name, batch, accum)))
    return read_run(result.run_dir)


def max_weight_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def update_size(weights):
    # LoRA B starts at zero, so B's values are the update itself.
    return max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k)


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
