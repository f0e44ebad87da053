"""Several processes (gloo on the CPU): the same loss and weights as one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftcli import rundir
from support import write_jsonl, write_recipe
from test_ga import STEPS, max_weight_diff, update_size, varlen_rows


def train(tmp_path, name, batch, accum, nproc=1, **train_extra):
    data = write_jsonl(tmp_path / "varlen.jsonl", varlen_rows())
    path = write_recipe(
        tmp_path / f"{name}.yaml",
        model={"name": "builtin:tiny-llama3", "max_seq_length": 512, "dtype": "float64"},
        dataset={"path": str(data), "format": "messages"},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={"max_steps": STEPS, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
               "optim": "sgd", "learning_rate": 0.2, "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
               "logging_steps": 1, "seed": 7, **train_extra},
        output_dir=str(tmp_path / name))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(path), "--nproc", str(nproc)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / name
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    losses = [m["loss"] for m in rundir.read_metrics(run / "metrics.jsonl") if "loss" in m]
    return weights, losses, yaml.safe_load((run / "recipe.resolved.yaml").read_text())["_run"], out


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one_w, one_l, _, _ = train(tmp_path, "one", 8, 1)
    two_w, two_l, manifest, out = train(tmp_path, "two", 2, 2, nproc=2)
    assert manifest["world_size"] == 2 and manifest["effective_batch_sequences"] == 8
    assert len(two_l) == STEPS
    # The normaliser is the count of trained tokens over the whole step on both ranks: exact in float64.
    assert max_weight_diff(one_w, two_w) < 1e-9 * update_size(one_w)
    assert torch.allclose(torch.tensor(one_l), torch.tensor(two_l), rtol=1e-6)
    # Only rank 0 reports progress and the result.
    assert out.stdout.count("run directory") == 1


def test_fsdp_on_cpu_processes_is_refused_with_a_reason(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"distributed": "fsdp", "max_steps": 1})
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(path), "--nproc", "2"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2
    assert "fsdp needs CUDA GPUs" in out.stderr and "Traceback" not in out.stderr


def test_qlora_under_fsdp_is_refused_by_the_recipe(tmp_path):
    from ftcli import recipe
    from ftcli.errors import RecipeError

    path = write_recipe(tmp_path / "r.yaml", model={"name": "builtin:tiny-qwen3", "load_in_4bit": True},
                        train={"distributed": "fsdp"})
    with pytest.raises(RecipeError, match="QLoRA under FSDP is not supported"):
        recipe.load(path)
