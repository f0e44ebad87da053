"""Pipeline recipes (`stages:`): each stage expands into a full recipe with the right hand-off, every stage is
validated before anything loads, and errors name `stages[i].key.path` with file and line."""

import pytest
import yaml

from ftcli import recipe
from ftcli.errors import BadInput, RecipeError
from helpers.runs import REPO

SFT_DATA = str(REPO / "recipes" / "data" / "quickstart.jsonl")
PAIRS = str(REPO / "recipes" / "data" / "preference-sample.jsonl")
PROMPTS = str(REPO / "recipes" / "data" / "math-sample.jsonl")


def write_pipeline(tmp_path, stages, name="pipe", **top):
    data = {"model": {"name": "builtin:tiny-llama3", "max_seq_length": 64}, "template": {"name": "llama3"},
            "lora": {"r": 8, "alpha": 16}, "train": {"max_steps": 2, "learning_rate": 1e-3},
            "export": {"formats": ["gguf"], "gguf_quant": ["f16"]}, "output_dir": str(tmp_path / "run"), **top,
            "stages": stages}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def sft(**kw):
    return {"stage": "sft", "dataset": {"path": SFT_DATA}, **kw}


def dpo(**kw):
    return {"stage": "dpo", "dataset": {"path": PAIRS, "format": "preference"}, **kw}


def grpo(**kw):
    return {"stage": "grpo", "dataset": {"path": PROMPTS, "format": "prompt"},
            "train": {"per_device_train_batch_size": 4, "grpo": {"num_generations": 4, "rewards": [
                {"type": "numeric_match", "column": "answer"}]}}, **kw}


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        recipe.load_pipeline(path, overrides)
    return info.value.problems


def test_each_stage_continues_the_previous_adapter_and_only_the_last_exports(tmp_path):
    loaded = recipe.load_any(write_pipeline(tmp_path, [sft(), dpo(train={"lr": 5e-4, "dpo": {"beta": 0.3}}),
                                                       grpo()]))
    assert isinstance(loaded, recipe.Pipeline)
    first, second, third = (s.recipe for s in loaded.stages)
    assert [s.folder for s in loaded.stages] == ["stages/01-sft", "stages/02-dpo", "stages/03-grpo"]
    assert first.lora.r == 8 and first.model.adapter is None and first.model.name == "builtin:tiny-llama3"
    assert second.model.adapter == str(tmp_path / "run" / "stages" / "01-sft" / "adapter")
    assert second.lora is None and second.model.name == "builtin:tiny-llama3"  # same base, the adapter continues
    assert third.model.adapter == str(tmp_path / "run" / "stages" / "02-dpo" / "adapter")
    # train is merged key by key: the stage's own values win, the rest comes from the top level
    assert second.train.learning_rate == 5e-4 and second.train.dpo.beta == 0.3 and second.train.max_steps == 2
    assert first.train.learning_rate == 1e-3 and third.train.stage == "grpo"
    assert [r.export.formats for r in (first, second, third)] == [[], [], ["gguf"]]
    assert {r.template.name for r in (first, second, third)} == {"llama3"}  # one template for every stage
    assert {r.output_dir for r in (first, second, third)} == {
        str(tmp_path / "run" / "stages" / f) for f in ("01-sft", "02-dpo", "03-grpo")}


def test_merge_before_starts_a_fresh_adapter_on_the_merged_weights(tmp_path):
    loaded = recipe.load_pipeline(write_pipeline(tmp_path, [sft(), dpo(merge_before=True, lora={"r": 4})]))
    first, second = (s.recipe for s in loaded.stages)
    assert first.export.formats == ["safetensors"]  # stage 1 writes merged/ for stage 2
    assert second.model.name == str(tmp_path / "run" / "stages" / "01-sft" / "merged")
    assert second.model.adapter is None and second.lora.r == 4


def test_a_full_finetune_hands_over_its_model_folder(tmp_path):
    loaded = recipe.load_pipeline(write_pipeline(tmp_path, [sft(), dpo()], lora=None))
    second = loaded.stages[1].recipe
    assert second.model.name == str(tmp_path / "run" / "stages" / "01-sft" / "model") and second.lora is None


def test_errors_of_every_stage_are_located_at_their_stage_key_path(tmp_path):
    path = write_pipeline(tmp_path, [sft(train={"learnin_rate": 1e-4}), dpo(train={"dpo": {"beta": -1}}),
                                     grpo(train={"per_device_train_batch_size": 4, "grpo": {"num_generations": 4}})])
    problems = problems_of(path)
    text = path.read_text().splitlines()
    beta_line = next(i for i, line in enumerate(text, 1) if "beta: -1" in line)
    assert any(p.startswith(f"{path}:{beta_line}: `stages[1].train.dpo.beta`") for p in problems), problems
    assert any("unknown key `stages[0].train.learnin_rate`" in p and "learning_rate" in p for p in problems)
    assert any("stages[2].train.grpo" in p and "at least one reward" in p for p in problems), problems
    assert len(problems) == 3  # every stage checked before anything loads


def test_rules_that_span_stages(tmp_path):
    problems = problems_of(write_pipeline(tmp_path, [
        sft(merge_before=True), dpo(lora={"r": 4}), dpo(bogus=1), {"stage": "ppo"}],
        train={"stage": "sft"}))
    joined = "\n".join(problems)
    assert "train.stage: in a pipeline each entry" in joined
    assert "stages[0].merge_before: the first stage" in joined
    assert "stages[1].lora: this stage keeps training the previous stage's adapter" in joined
    assert "unknown key `stages[2].bogus`" in joined
    assert "`stages[3].stage`" in joined
    twice = problems_of(write_pipeline(tmp_path, [sft(), sft()], name="twice"))
    assert "a second stage called 'sft'" in twice[0] and "name:" in twice[0]
    assert problems_of(write_pipeline(tmp_path, [sft(), dpo(merge_before=True)], name="full", lora=None))[0] \
        .endswith("stages[1].merge_before: the previous stage is a full finetune, there is no adapter to merge")
    assert "no dataset here and none at the top level" in problems_of(
        write_pipeline(tmp_path, [{"stage": "sft"}], name="nodata"))[0]


def test_a_cross_field_rule_of_one_stage_names_that_stage(tmp_path):
    """Packing is SFT-only: inherited from the top level it is fine for stage 0 and wrong for the DPO stage."""
    problems = problems_of(write_pipeline(tmp_path, [sft(), dpo()], train={"packing": True}))
    assert len(problems) == 1 and "stages[1].train.packing: packing applies to SFT" in problems[0]


def test_set_reaches_every_stage_or_one_stage(tmp_path):
    path = write_pipeline(tmp_path, [sft(), dpo(train={"learning_rate": 5e-4})])
    loaded = recipe.load_pipeline(path, ["train.max_steps=7", "stages.1.train.dpo.beta=0.4", "stages[0].train.lr=1e-2"])
    first, second = (s.recipe for s in loaded.stages)
    assert first.train.max_steps == second.train.max_steps == 7
    assert second.train.dpo.beta == 0.4 and first.train.learning_rate == 1e-2
    assert second.train.learning_rate == 5e-4  # the stage's own value stays
    assert "--set stages.1.train.dpo.beta=-1" in problems_of(path, ["stages.1.train.dpo.beta=-1"])[0]
    assert "stages 0 to 1" in problems_of(path, ["stages.5.train.lr=1"])[0]


def test_stages_are_found_by_name_kind_or_number(tmp_path):
    loaded = recipe.load_pipeline(write_pipeline(tmp_path, [sft(name="warmup"), dpo(), dpo(name="dpo-2")]))
    assert loaded.index_of("warmup") == 0 and loaded.index_of("sft") == 0 and loaded.index_of("3") == 2
    assert loaded.index_of("dpo") == 1  # the name wins over the kind
    with pytest.raises(BadInput, match="not a stage of this pipeline"):
        loaded.index_of("grpo")


def test_single_stage_loader_points_pipelines_to_train(tmp_path):
    path = write_pipeline(tmp_path, [sft()])
    with pytest.raises(RecipeError, match="pipeline recipe"):
        recipe.load(path)
    single = recipe.load_any(REPO / "recipes" / "quickstart.yaml")
    assert isinstance(single, recipe.Recipe)


def test_the_bundled_pipelines_validate():
    for name in ("pipeline-llama3", "pipeline-llama3-offline", "pipeline-qwen3-reasoning",
                 "pipeline-qwen3-reasoning-offline"):
        loaded = recipe.load_pipeline(REPO / "recipes" / f"{name}.yaml")
        assert len(loaded.stages) >= 2 and loaded.stages[-1].recipe.export.formats, name
