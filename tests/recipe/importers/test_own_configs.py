"""`ftcli import` on small configs written for the cases the peer fixtures lack: LLaMA-Factory's dataset_info.json,
TRL's --stage, keys no rule knows, and imported recipes that train on a builtin model as they are."""

import json

import pytest
import yaml

from ftcli import recipe
from ftcli.errors import BadInput
from ftcli.recipe import importers
from ftcli.runner import train as training
from helpers.runs import write_jsonl
from runner.test_resume_and_guards import ftcli

SHAREGPT = [{"conversations": [{"from": "human", "value": f"What is {i} + 1?"}, {"from": "gpt", "value": f"{i + 1}"}]}
            for i in range(8)]
RANKED = [{"conversations": [{"from": "human", "value": f"What is {i} + 1?"}], "chosen": {"from": "gpt", "value":
           f"{i + 1}"}, "rejected": {"from": "gpt", "value": "I do not know."}} for i in range(8)]


def write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows_of(imported):
    return {r.key: (r.status, r.detail) for r in imported.rows}


def test_axolotl_sharegpt_config_imports_and_trains_as_written(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", SHAREGPT)
    config = write(tmp_path / "axolotl.yml", {
        "base_model": "builtin:tiny-llama3", "chat_template": "llama3", "sequence_len": 64, "adapter": "lora",
        "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True, "micro_batch_size": 4, "max_steps": 2,
        "learning_rate": "1e-3", "datasets": [{"path": str(data), "type": "chat_template",
                                               "field_messages": "conversations",
                                               "message_property_mappings": {"role": "from", "content": "value"}}],
        "some_new_axolotl_key": 3, "wandb_project": None})
    imported = importers.import_config(config)
    rows = rows_of(imported)
    assert rows["learning_rate"][0] == "mapped" and imported.recipe.train.learning_rate == 1e-3  # "1e-3" is a str
    assert rows["some_new_axolotl_key"][0] == "unsupported" and "ftcli import knows" in rows["some_new_axolotl_key"][1]
    assert rows["wandb_project"] == ("ignored", "empty: the tool's default, nothing to carry over")
    out = write(tmp_path / "recipe.yaml", {}) and tmp_path / "recipe.yaml"
    out.write_text(imported.yaml)
    result = training.run(recipe.load(out, [f"output_dir={tmp_path / 'run'}"]))
    assert len([m for m in result.metrics if "loss" in m]) == 2 and result.adapter_dir.exists()


def test_llamafactory_dataset_names_resolve_through_dataset_info(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", RANKED)
    (folder / "dataset_info.json").write_text(json.dumps({
        "my_pairs": {"file_name": "pairs.jsonl", "ranking": True, "formatting": "sharegpt",
                     "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "hub_chats": {"hf_hub_url": "org/chats", "formatting": "sharegpt", "columns": {"messages": "dialog"}}}))
    config = write(tmp_path / "lf.yaml", {
        "model_name_or_path": "builtin:tiny-llama3", "stage": "dpo", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "my_pairs", "template": "llama3", "cutoff_len": 64, "per_device_train_batch_size": 4,
        "max_steps": 1, "pref_beta": 0.2})
    monkeypatch.chdir(tmp_path / "data")  # dataset_dir is found next to the config too, not only in the cwd
    imported = importers.import_config(config)
    assert imported.recipe.dataset.path == str(folder / "pairs.jsonl")
    assert imported.recipe.dataset.format == "preference" and imported.recipe.dataset.columns == {
        "prompt": "conversations"}
    assert imported.recipe.lora.alpha == 8 and imported.recipe.train.dpo.beta == 0.2  # alpha: LF's 2 x rank
    result = training.run(recipe.load(write(tmp_path / "r.yaml", imported.data), [f"output_dir={tmp_path / 'run'}"]))
    assert any("rewards/margins" in m for m in result.metrics)  # sharegpt single-message replies train as pairs
    hub = importers.import_config(write(tmp_path / "hub.yaml", {
        "model_name_or_path": "org/model", "stage": "sft", "dataset": "hub_chats", "dataset_dir": str(folder)}))
    assert hub.recipe.dataset.path == "org/chats" and hub.recipe.dataset.columns == {"messages": "dialog"}


def test_trl_stage_comes_from_the_command(tmp_path):
    config = write(tmp_path / "trl.yaml", {"model_name_or_path": "org/model", "dataset_name": "org/pairs",
                                           "beta": 0.3, "use_peft": True, "lora_r": 8, "env": {"X": "1"}})
    as_dpo = importers.import_config(config, stage="dpo")
    assert as_dpo.recipe.train.stage == "dpo" and as_dpo.recipe.train.dpo.beta == 0.3
    assert as_dpo.recipe.dataset.format == "preference" and as_dpo.recipe.lora.r == 8
    as_sft = importers.import_config(config)
    assert as_sft.recipe.train.stage == "sft" and rows_of(as_sft)["beta"][0] == "ignored"
    assert rows_of(as_sft)["env"][0] == "unsupported"
    with pytest.raises(BadInput, match="--stage is for TRL"):
        importers.import_config(write(tmp_path / "ax.yml", {"base_model": "m", "datasets": [{"path": "d"}]}),
                                stage="dpo")
    with pytest.raises(BadInput, match="not a config ftcli import knows"):
        importers.import_config(write(tmp_path / "other.yaml", {"something": 1}))


def test_import_command_prints_the_table_and_writes_a_recipe_that_validates(tmp_path):
    config = write(tmp_path / "lf.yaml", {"model_name_or_path": "builtin:tiny-llama3", "stage": "sft",
                                          "dataset": "nowhere", "deepspeed": "ds.json"})
    out = tmp_path / "recipe.yaml"
    done = ftcli(["import", config, "-o", out], {"COLUMNS": "250"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deepspeed" in done.stdout and "unsupported" in done.stdout and "train.distributed: fsdp" in done.stdout
    assert "#   deepspeed: no DeepSpeed" in out.read_text()
    assert ftcli(["validate", out]).returncode == 0
    again = ftcli(["import", config, "-o", out])
    assert again.returncode == 2 and "--overwrite" in again.stderr
    refused = ftcli(["import", write(tmp_path / "kto.yaml", {"model_name_or_path": "m", "stage": "kto",
                                                             "dataset": "d"})])
    assert refused.returncode == 2 and "KTO" in refused.stderr and "Traceback" not in refused.stderr
