"""The gradient-accumulation comparison runs (tests/stages/test_ga.py, tests/engine/test_distributed.py): variable-length
rows, a float64 SGD recipe, and reading a run's LoRA weights and losses back."""

from safetensors.torch import load_file

from ftcli import recipe
from ftcli.runner import rundir
from ftcli.runner import train as training
from helpers.runs import conversation, write_jsonl, write_recipe

STEPS = 3


def varlen_rows():
    rows = []
    for i in range(STEPS * 8):
        repeats = 40 if i % 5 == 0 else 1 + i % 3  # most replies short, a few ~30x longer
        reply = " ".join(["the answer is", str(i)] * repeats)
        rows.append(conversation(f"Question {i}: please answer.", reply))
    return rows


def ga_recipe(tmp_path, name, batch, accum, **train):
    """The GA comparison recipe: float64, plain SGD, constant LR, no clipping, on the variable-length rows;
    `train` overrides train settings (packing, max_steps)."""
    data = write_jsonl(tmp_path / "varlen.jsonl", varlen_rows())
    return write_recipe(
        tmp_path / f"{name}.yaml",
        model={"name": "builtin:tiny-llama3", "max_seq_length": 512, "dtype": "float64"},
        dataset={"path": str(data), "format": "messages"},
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        train={"max_steps": STEPS, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
               "optim": "sgd", "learning_rate": 0.2, "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
               "logging_steps": 1, "seed": 7, **train},
        output_dir=str(tmp_path / name),
    )


def read_run(run_dir):
    """(LoRA weights, logged losses) of a finished run, read back from its directory."""
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    losses = [m["loss"] for m in rundir.read_metrics(run_dir / "metrics.jsonl") if "loss" in m]
    return weights, losses


def run_once(tmp_path, name, batch, accum, **train):
    result = training.run(recipe.load(ga_recipe(tmp_path, name, batch, accum, **train)))
    return read_run(result.run_dir)


def max_weight_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def update_size(weights):
    # LoRA B starts at zero, so B's values are the update itself.
    return max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k)
