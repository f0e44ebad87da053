"""The bundled offline pipeline learns in every stage on the CPU, and exports once, after its last stage."""

import re

import pytest

from ftcli import recipe
from ftcli.data import formats, templates
from ftcli.models import lora, pretrained
from ftcli.models.generate import reply
from ftcli.runner import pipeline as pipelines
from ftcli.runner import rundir
from helpers.runs import REPO

FORMAT = re.compile(r"ANSWER: \d+")


def format_accuracy(stage_recipe, adapter_dir, rows) -> float:
    """Share of greedy replies in the taught format, from the base (adapter_dir None) or with the adapter."""
    model, tokenizer = pretrained.load(stage_recipe.model.model_copy(update={"adapter": None}))
    if adapter_dir is not None:
        model = lora.continue_adapter(model, str(adapter_dir), False)
    template = templates.resolve(stage_recipe.template.name, tokenizer)
    prompts = [row["messages"][:1] for row in rows]
    return sum(bool(FORMAT.fullmatch(reply(model, tokenizer, template, p).strip())) for p in prompts) / len(prompts)


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
