"""Recipe schema: defaults, aliases, overrides, and error messages a user can act on."""

import datetime as dt

import pytest
import yaml

from ftcli import recipe
from ftcli.errors import RecipeError
from helpers.runs import REPO, write_recipe


def problems_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        recipe.load(path, overrides)
    return info.value.problems


def test_defaults_are_filled_and_output_dir_is_timestamped(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: builtin:tiny-llama3}\ndataset: {path: d.jsonl}\noutput_dir: runs/{name}-{timestamp}\n")
    loaded = recipe.load(path, now=dt.datetime(2026, 1, 2, 3, 4, 5))
    assert loaded.train.stage == "sft" and loaded.train.learning_rate == 2e-4
    assert loaded.template.name == "auto" and loaded.template.train_on == "assistant"
    assert loaded.lora is None  # no lora section = full finetune
    assert loaded.output_dir == "runs/r-20260102-030405"
    assert recipe.load(path, now=dt.datetime(2026, 1, 2, 3, 4, 6)).output_dir != loaded.output_dir


def test_aliases_in_yaml_and_set_resolve_to_canonical_names(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: builtin:tiny-llama3}\ndataset: {path: d.jsonl}\n"
                    "train: {lr: 5.0e-4, batch_size: 3, grad_accum: 2}\nlora: {rank: 4, lora_alpha: 8}\n")
    loaded = recipe.load(path, ["train.epochs=2", "model.max_length=77", "model.dtype=bf16"])
    assert loaded.train.learning_rate == 5e-4
    assert loaded.train.per_device_train_batch_size == 3 and loaded.train.gradient_accumulation_steps == 2
    assert loaded.lora.r == 4 and loaded.lora.alpha == 8
    assert loaded.train.num_train_epochs == 2 and loaded.model.max_seq_length == 77
    assert loaded.model.dtype == "bfloat16"
    dumped = yaml.safe_load(recipe.to_yaml(loaded))
    assert "learning_rate" in dumped["train"] and "lr" not in dumped["train"]
    assert dumped["lora"]["r"] == 4 and "rank" not in dumped["lora"]


def test_set_values_are_parsed_as_yaml(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", export={"formats": ["safetensors"]})
    loaded = recipe.load(path, ["export.formats=[]", "train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]"])
    assert loaded.export.formats == []
    assert loaded.train.learning_rate == pytest.approx(1e-4)
    assert loaded.lora.target_modules == ["q_proj", "v_proj"]


def test_alias_and_canonical_name_together_is_an_error(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"lr": 1e-3, "learning_rate": 2e-3})
    problem = problems_of(path)[0]
    assert "are the same setting" in problem and problem.startswith(f"{path}:")


def test_unknown_key_names_file_line_path_and_closest_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: builtin:tiny-llama3\ndataset:\n  path: d.jsonl\ntrain:\n  learnin_rate: 1e-4\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:6:")
    assert "train.learnin_rate" in problem and "did you mean `learning_rate`" in problem


def test_wrong_type_and_range_name_the_key_and_what_was_expected(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"per_device_train_batch_size": 0, "lr_scheduler_type": "cosin"})
    text = "\n".join(problems_of(path))
    assert "train.per_device_train_batch_size" in text and "greater than 0" in text
    assert "unknown scheduler 'cosin'" in text and "cosine" in text


def test_bad_value_from_set_is_attributed_to_set(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    [problem] = problems_of(path, ["train.lr=fast"])
    assert problem.startswith("--set train.lr=fast") and "train.learning_rate" in problem


def test_unknown_optimizer_suggests_close_names(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"optim": "adam_torch"})
    assert "did you mean adamw_torch" in problems_of(path)[0]


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: [unclosed\ndataset: {path: x}\n")
    [problem] = problems_of(path)
    assert "YAML syntax error" in problem and str(path) + ":" in problem
    line, column = problem.split(":")[1:3]
    assert line.isdigit() and column.isdigit()


@pytest.mark.parametrize("sections, expected", [
    ({"model": {"name": "x", "load_in_4bit": True}, "lora": None}, "add a `lora:` section"),
    ({"dataset": {"path": "d.jsonl", "format": "preference"}}, "does not fit train.stage: sft"),
    ({"train": {"stage": "grpo"}, "dataset": {"path": "d.jsonl", "format": "messages"}}, "needs format: prompt"),
    ({"train": {"max_steps": 0}}, "positive number of steps"),
])
def test_cross_field_rules_explain_themselves(tmp_path, sections, expected):
    path = write_recipe(tmp_path / "r.yaml", **sections)
    text = "\n".join(problems_of(path))
    assert expected in text


def test_missing_required_section_and_missing_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: builtin:tiny-llama3}\n")
    assert "`dataset` is required" in problems_of(path)[0]
    assert "recipe file not found" in problems_of(tmp_path / "nope.yaml")[0]


def test_malformed_set_is_rejected(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    assert "KEY.PATH=VALUE" in problems_of(path, ["train.learning_rate"])[0]
    assert "not a section" in problems_of(path, ["train.learning_rate.x=1"])[0]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_every_bundled_recipe_is_valid(name):
    loaded = recipe.load_any(REPO / "recipes" / name)
    stages = [s.recipe for s in loaded.stages] if isinstance(loaded, recipe.Pipeline) else [loaded]
    assert all(r.model.name and r.dataset.path for r in stages)


def test_every_recipe_key_is_documented():
    """docs/recipes.md lists every field of every section, so the reference cannot fall behind."""
    docs = (REPO / "docs" / "recipes.md").read_text()
    for section_name, field in recipe.Recipe.model_fields.items():
        assert f"`{section_name}`" in docs, section_name
        section = recipe.section_class(recipe.Recipe, section_name)
        for key in (section.model_fields if section else {}):
            assert f"`{key}`" in docs, f"{section_name}.{key} is not in docs/recipes.md"


def test_memory_settings_validate_with_one_clear_message(tmp_path):
    for choice in (True, False, "auto", "offload"):
        loaded = recipe.load(write_recipe(tmp_path / "r.yaml", train={"gradient_checkpointing": choice}))
        assert loaded.train.gradient_checkpointing == choice
    bad = problems_of(write_recipe(tmp_path / "r.yaml", train={"gradient_checkpointing": "offlaod"}))
    assert len(bad) == 1 and "choose auto, true, false or offload" in bad[0]
    assert "lean" in problems_of(write_recipe(tmp_path / "r.yaml", train={"memory": "fastest"}))[0]


@pytest.mark.parametrize("field, value", [("train.max_steps", "yes"), ("train.learning_rate", "on"),
                                          ("lora.r", "true"), ("model.max_seq_length", "no")])
def test_booleans_only_where_the_schema_says_bool(tmp_path, field, value):
    section, key = field.split(".")
    sections = {"model": "  name: builtin:tiny-llama3\n", "dataset": "  path: d.jsonl\n", "lora": "  alpha: 8\n",
                "train": "  seed: 1\n"}
    sections[section] += f"  {key}: {value}\n"
    path = tmp_path / "r.yaml"
    path.write_text("".join(f"{name}:\n{body}" for name, body in sections.items()))
    [problem] = problems_of(path)
    assert f"`{field}`" in problem and "not a boolean" in problem and problem.startswith(f"{path}:")
    line = int(problem.split(":")[1])
    assert path.read_text().splitlines()[line - 1].strip() == f"{key}: {value}"


def test_real_booleans_and_bool_shorthands_still_load(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"load_in_4bit": True}, dataset={"skip_invalid": True},
                        train={"packing": False, "kernels": False, "gradient_checkpointing": True})
    loaded = recipe.load(path, ["lora.use_dora=yes"])
    assert loaded.model.load_in_4bit is True and loaded.lora.use_dora is True and loaded.train.packing is False


@pytest.mark.parametrize("override, expected", [
    ("learning_rate=1", "unknown key `learning_rate` (did you mean `train.learning_rate`?)"),
    ("train.learnin_rate=1", "unknown key `train.learnin_rate` (did you mean `learning_rate`?)"),
    ("train.nosuch.deep=1", "unknown key `train.nosuch`"),
    ("lora.rnk=4", "(did you mean `r`?)"),
    ("grpo.beta=0.1", "(did you mean `train.grpo`?)"),
])
def test_set_paths_are_checked_against_the_schema(tmp_path, override, expected):
    path = write_recipe(tmp_path / "r.yaml")
    [problem] = problems_of(path, [override])
    assert problem.startswith(f"--set {override}: ") and expected in problem
    assert str(path) not in problem  # the recipe file is not to blame


def test_unknown_top_level_key_suggests_its_section(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", learning_rate=1e-4)
    [problem] = problems_of(path)
    assert "unknown key `learning_rate` (did you mean `train.learning_rate`?)" in problem


def test_unknown_output_dir_placeholder_is_an_error(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", output_dir="runs/{bogus}-{name}")
    [problem] = problems_of(path)
    assert "output_dir" in problem and "{bogus}" in problem and "{name} and {timestamp}" in problem
