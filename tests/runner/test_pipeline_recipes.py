"""The bundled offline pipelines learn in every stage on the CPU, and export once, after their last stage."""

import re

import pytest
import torch

from ftcli import recipe
from ftcli.data import formats, templates
from ftcli.data.messages import prompt_messages
from ftcli.data.templates import stop_token_ids
from ftcli.models import lora, pretrained
from ftcli.models.generate import reply
from ftcli.recipe.rewards import FormatReward
from ftcli.rewards.scoring import score_format
from ftcli.runner import pipeline as pipelines
from ftcli.runner import rundir
from helpers.runs import REPO

FORMAT = re.compile(r"ANSWER: \d+")
THINK_FORMAT = FormatReward(type="format", answer_pattern=r"ANSWER: \d+")


def load_with(stage_recipe, adapter_dir):
    """The stage's base model, with `adapter_dir` on it (None: the base alone), its tokenizer and template."""
    model, tokenizer = pretrained.load(stage_recipe.model.model_copy(update={"adapter": None}))
    if adapter_dir is not None:
        model = lora.continue_adapter(model, str(adapter_dir), False)
    return model, tokenizer, templates.resolve(stage_recipe.template.name, tokenizer)


def format_accuracy(stage_recipe, adapter_dir, rows, in_format=lambda text: bool(FORMAT.fullmatch(text))) -> float:
    """Share of greedy replies in the taught format, from the base (adapter_dir None) or with the adapter."""
    model, tokenizer, template = load_with(stage_recipe, adapter_dir)
    prompts = [row["messages"][:1] for row in rows]
    return sum(in_format(reply(model, tokenizer, template, p).strip()) for p in prompts) / len(prompts)


@torch.no_grad()
def sampled_format_reward(stage_recipe, adapter_dir, rows, samples: int = 4) -> float:
    """Mean format reward of sampled replies (as GRPO samples them) to every prompt, with a fixed seed."""
    model, tokenizer, template = load_with(stage_recipe, adapter_dir)
    grpo = stage_recipe.train.grpo
    torch.manual_seed(0)
    scores = []
    for row in rows:
        ids = templates.prompt_ids(template, prompt_messages(row["prompt"], None, template), tokenizer)
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=True, temperature=grpo.temperature, top_p=grpo.top_p, top_k=0,
                             max_new_tokens=grpo.max_completion_length, num_return_sequences=samples,
                             eos_token_id=stop_token_ids(template, tokenizer), pad_token_id=tokenizer.pad_token_id)
        scores += [score_format(THINK_FORMAT, tokenizer.decode(o[len(ids):], skip_special_tokens=True))
                   for o in out]
    return sum(scores) / len(scores)


@pytest.mark.slow
def test_offline_llama3_pipeline_learns_in_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = recipe.load_pipeline(REPO / "recipes" / "pipeline-llama3-offline.yaml", [f"output_dir={tmp_path / 'run'}"])
    result = pipelines.run(loaded)
    sft, dpo = loaded.stages
    rows = formats.read_rows(sft.recipe.dataset)[0][:12]
    before = format_accuracy(sft.recipe, None, rows)
    after = format_accuracy(sft.recipe, tmp_path / "run" / sft.folder / "adapter", rows)
    assert before <= 0.1 and after >= 0.75, (before, after)  # SFT: the answer format is learnt
    margins = [m["rewards/margins"] for m in rundir.read_metrics(tmp_path / "run" / dpo.folder / "metrics.jsonl")
               if "rewards/margins" in m]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # DPO starts at its reference, the SFT model
    assert sum(margins[-3:]) / 3 > 0.3, margins  # and the margin grows
    assert not (tmp_path / "run" / sft.folder / "export").exists()  # export once, after the last stage
    assert list((tmp_path / "run" / dpo.folder / "export").glob("model-f16.gguf"))
    assert result.loss_plot.exists() and result.last.gguf_path is not None


@pytest.mark.slow
def test_offline_qwen3_reasoning_pipeline_learns_in_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = recipe.load_pipeline(REPO / "recipes" / "pipeline-qwen3-reasoning-offline.yaml",
                                  [f"output_dir={tmp_path / 'run'}"])
    result = pipelines.run(loaded)
    sft, grpo = loaded.stages
    sft_adapter, grpo_adapter = (tmp_path / "run" / s.folder / "adapter" for s in (sft, grpo))
    rows = formats.read_rows(sft.recipe.dataset)[0][:12]
    in_format = lambda text: score_format(THINK_FORMAT, text) == 1.0  # noqa: E731
    before = format_accuracy(sft.recipe, None, rows, in_format)
    after = format_accuracy(sft.recipe, sft_adapter, rows, in_format)
    assert before <= 0.1 and after >= 0.75, (before, after)  # SFT: <think>...</think> then ANSWER is learnt

    logged = [m["reward"] for m in rundir.read_metrics(tmp_path / "run" / grpo.folder / "metrics.jsonl")
              if "reward" in m]
    assert len(logged) == grpo.recipe.train.max_steps
    assert sum(logged[-5:]) / 5 > sum(logged[:5]) / 5 + 0.2, logged  # GRPO: the mean reward rises in training
    # and on the same prompts and seed, so the rise is the policy's, not the order of the prompts (control).
    prompts = formats.read_rows(grpo.recipe.dataset)[0][:24]
    start, end = (sampled_format_reward(grpo.recipe, a, prompts) for a in (sft_adapter, grpo_adapter))
    assert end > start + 0.2, (start, end)
    assert not (tmp_path / "run" / sft.folder / "export").exists()  # export once, after the last stage
    assert result.last.gguf_path is not None and result.last.gguf_path.parent.parent == tmp_path / "run" / grpo.folder
