"""Integration on the CPU: every builtin family trains, the run directory is complete and loadable."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from ftcli.models import builtin
from ftcli import recipe
from ftcli.runner import rundir
from ftcli.runner import train as training
from ftcli.errors import BadInput
from helpers.runs import REPO, conversation, write_jsonl, write_recipe

FAMILY_TEMPLATE = {"tiny-llama3": "llama3", "tiny-gemma3": "gemma3", "tiny-qwen3": "qwen3",
                   "tiny-phi3": "phi3", "tiny-mistral": "mistral"}


def chat_data(tmp_path):
    return str(REPO / "recipes" / "data" / "chat-sample.jsonl")


@pytest.mark.parametrize("name", builtin.BUILTINS)
def test_every_builtin_family_trains_three_lora_steps(tmp_path, name):
    path = write_recipe(tmp_path / "r.yaml", model={"name": f"builtin:{name}", "max_seq_length": 128},
                        template={"name": FAMILY_TEMPLATE[name]}, dataset={"path": chat_data(tmp_path)})
    result = training.run(recipe.load(path))
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert 0 < result.trainable_params < result.total_params


def test_run_directory_is_complete_and_loadable(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_recipe(tmp_path / "r.yaml", export={"formats": ["safetensors"]},
                        dataset={"eval_fraction": 0.1}, train={"eval_steps": 2})
    result = training.run(recipe.load(path, ["train.lr=2e-3"]))
    run = result.run_dir
    for name in ("recipe.resolved.yaml", "metrics.jsonl", "loss.png", "adapter", "merged", "summary.json"):
        assert (run / name).exists(), name
    assert not list(run.glob(".*tmp*")), "no half-written folders left behind"
    manifest = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert manifest["train"]["learning_rate"] == 2e-3  # the override is recorded
    facts = manifest["_run"]
    assert facts["status"] == "done" and facts["versions"]["transformers"]
    assert facts["dataset"]["fingerprint"].startswith("sha256:") and facts["effective_batch_sequences"] == 4
    metrics = rundir.read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert any("eval_loss" in m for m in metrics)

    base_path = builtin.builtin_path("builtin:tiny-llama3")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    assert tokenizer.chat_template == (REPO / "templates" / "llama3.jinja").read_text()
    ids = torch.tensor([tokenizer("ANSWER: 12 plus 7")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)


def test_full_finetune_memorises_sixteen_examples(tmp_path):
    rows = [conversation(f"Code word {i}?", f"The code word is {w}.")
            for i, w in enumerate("apple river stone cloud maple tiger lemon piano ocean amber cedar delta eagle frost grape honey".split())]
    data = write_jsonl(tmp_path / "sixteen.jsonl", rows)
    path = write_recipe(tmp_path / "r.yaml", lora=None, dataset={"path": str(data)},
                        model={"name": "builtin:tiny-qwen3"}, template={"name": "qwen3"},
                        train={"max_steps": 60, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
                               "lr_scheduler_type": "constant", "logging_steps": 5})
    result = training.run(recipe.load(path))
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert losses[-1] < 0.3, losses
    assert (result.model_dir / "model.safetensors").exists() and result.adapter_dir is None


def test_qlora_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    path = write_recipe(tmp_path / "r.yaml", model={"name": "builtin:tiny-qwen3", "load_in_4bit": True},
                        template={"name": "qwen3"}, dataset={"path": chat_data(tmp_path)})
    result = training.run(recipe.load(path))
    assert len([m for m in result.metrics if "loss" in m]) == 3
    assert (result.adapter_dir / "adapter_config.json").exists()


SFT_RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml")
                     if not recipe.is_pipeline(p) and recipe.load(p).train.stage == "sft")


@pytest.mark.parametrize("name", SFT_RECIPES)
def test_every_bundled_sft_recipe_trains_two_steps_on_its_builtin(tmp_path, name, monkeypatch):
    loaded = recipe.load(REPO / "recipes" / name)
    family = loaded.template.name if loaded.template.name in FAMILY_TEMPLATE.values() else "llama3"
    builtin_name = next(b for b, f in FAMILY_TEMPLATE.items() if f == family)
    monkeypatch.chdir(REPO)  # recipes name their data relative to the repo root
    overrides = [f"model.name=builtin:{builtin_name}", "train.max_steps=2", "train.save_steps=null",
                 "train.logging_steps=1", f"output_dir={tmp_path / 'run'}", "model.max_seq_length=256",
                 "model.dtype=auto"]
    result = training.run(recipe.load(REPO / "recipes" / name, overrides))
    assert len([m for m in result.metrics if "loss" in m]) == 2


def test_existing_run_is_not_overwritten_without_flag(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 1})
    training.run(recipe.load(path))
    with pytest.raises(BadInput, match="--overwrite"):
        training.run(recipe.load(path))
    training.run(recipe.load(path), overwrite=True)


def test_dry_run_writes_nothing(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    result = training.run(recipe.load(path), dry_run=True)
    assert result.trainable_params > 0 and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_quickstart_learns_the_answer_format_and_runs_twice(tmp_path):
    """The README's main command, as a user runs it: the finetuned model answers in the taught format."""
    env = {**os.environ, "FTCLI_CACHE": os.environ.get("FTCLI_CACHE", str(tmp_path / "cache"))}
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipes").symlink_to(REPO / "recipes")
    for attempt in range(2):
        out = subprocess.run([sys.executable, "-m", "ftcli", "train", "recipes/quickstart.yaml"], cwd=work,
                             capture_output=True, text=True, env=env, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted((work / "runs").iterdir())
    assert len(runs) == 2  # timestamped output_dir: a second run does not collide with the first
    summary = json.loads((runs[-1] / "summary.json").read_text())
    assert re.fullmatch(r"ANSWER: \d+", summary["sample_reply"].strip()), summary["sample_reply"]
    # The exported GGUF, run by llama.cpp, answers in the same format.
    assert summary["gguf"].endswith("model-f16.gguf")
    assert re.fullmatch(r"ANSWER: \d+", summary["gguf_reply"].strip()), summary["gguf_reply"]
    assert (runs[-1] / "export" / "Modelfile").exists()
    assert "sample" in out.stdout and str(runs[-1].relative_to(work)) in out.stdout
    # The README's "What a run writes" names everything the quickstart leaves, and it leaves no empty folder.
    written = {p.name for p in runs[-1].iterdir()}
    assert written <= readme_run_entries() and "checkpoints" not in written, written - readme_run_entries()
    assert all(any(p.iterdir()) for p in runs[-1].iterdir() if p.is_dir())
    for line in ("sample (greedy, from the finetuned model)", "the same from the GGUF (llama.cpp, model-f16.gguf)",
                 f"chat with it: ftcli chat {runs[-1].relative_to(work)}/export/model-f16.gguf"):
        assert line in out.stdout, line  # the README's quickstart output, line for line


def readme_run_entries() -> set[str]:
    """The entries of the README's "What a run writes" block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## What a run writes\n\n```\n(.*?)```", text, re.S).group(1)
    return {m.group(1).rstrip("/") for m in re.finditer(r"^  (\S+)", block, re.M)}


def test_the_readme_lists_what_a_run_writes():
    assert {"recipe.resolved.yaml", "adapter", "merged", "export", "metrics.jsonl", "loss.png", "logs",
            "summary.json", "checkpoints"} <= readme_run_entries()
