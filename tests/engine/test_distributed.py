"""Several processes (gloo on the CPU): the same loss and weights as one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from helpers.runs import write_recipe
from helpers.ga import STEPS, ga_recipe, max_weight_diff, read_run, update_size


def train(tmp_path, name, batch, accum, nproc=1):
    path = ga_recipe(tmp_path, name, batch, accum)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "ftcli", "train", str(path), "--nproc", str(nproc)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / name
    weights, losses = read_run(run)
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
