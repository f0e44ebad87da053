"""`ftcli import` on the real example configs of Axolotl, LLaMA-Factory and TRL (../shared/fixtures/peer-configs):
each imports into a recipe that validates, with the mapping table checked, or is refused with its reason."""

import os

import pytest
import yaml

from ftcli import recipe
from ftcli.errors import BadInput
from ftcli.recipe import importers
from helpers.runs import REPO

PEERS = REPO.parent / "shared" / "fixtures" / "peer-configs"
LLAMA3_ALL = ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"]

# file -> (recipe values that must come across, source keys that must be listed as unsupported)
IMPORTED = {
    "axolotl-lora-1b.yml": ({
        "model.name": "NousResearch/Llama-3.2-1B", "dataset.path": "teknium/GPT4-LLM-Cleaned",
        "dataset.format": "alpaca", "dataset.eval_fraction": 0.1, "lora.r": 16, "lora.alpha": 32,
        "lora.dropout": 0.05, "lora.target_modules": LLAMA3_ALL, "train.stage": "sft", "train.packing": True,
        "model.max_seq_length": 2048, "train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 2,
        "train.optim": "adamw_8bit", "train.lr_scheduler_type": "cosine", "train.learning_rate": 2e-4},
        {"warmup_steps", "evals_per_epoch", "saves_per_epoch"}),
    "axolotl-instruct-lora-8b.yml": ({
        "model.name": "NousResearch/Meta-Llama-3-8B-Instruct", "template.name": "llama3",
        "dataset.path": "fozziethebeat/alpaca_messages_2k_test", "dataset.format": "messages",
        "dataset.columns": {"messages": "messages"}, "lora.r": 32, "lora.target_modules": "all-linear",
        "train.optim": "adamw_bnb_8bit", "model.max_seq_length": 4096},
        {"load_in_8bit", "warmup_steps", "evals_per_epoch", "saves_per_epoch"}),
    "axolotl-instruct-dpo-lora-8b.yml": ({
        "train.stage": "dpo", "dataset.format": "preference",
        "dataset.columns": {"prompt": "conversation", "chosen": "chosen", "rejected": "rejected"},
        "lora.alpha": 16, "train.gradient_accumulation_steps": 4},
        {"load_in_8bit", "warmup_steps", "evals_per_epoch", "saves_per_epoch"}),
    "axolotl-gemma-3-1b-qlora.yml": ({
        "model.name": "google/gemma-3-1b-it", "model.load_in_4bit": True, "template.name": "gemma3",
        "dataset.columns": {"messages": "conversations"}, "lora.r": 32, "train.num_train_epochs": 4},
        {"saves_per_epoch"}),
    "axolotl-32b-qlora.yaml": ({
        "model.name": "Qwen/Qwen3-32B", "template.name": "qwen3", "dataset.split": "train[:20%]",
        "model.load_in_4bit": True, "train.gradient_checkpointing": "offload", "train.optim": "adamw_torch_4bit"},
        {"evals_per_epoch", "saves_per_epoch"}),
    "axolotl-qlora.yml": ({
        "model.name": "mistralai/Mistral-7B-v0.1", "dataset.path": "mhenrichsen/alpaca_2k_test",
        "model.load_in_4bit": True, "lora.target_modules": "all-linear", "model.dtype": "bfloat16",
        "train.eval_steps": 20, "model.max_seq_length": 8192}, {"base_model_config", "warmup_steps"}),
    "axolotl-fft-8b.yaml": ({
        "model.name": "meta-llama/Meta-Llama-3-8B", "lora": None, "train.learning_rate": 2e-5,
        "template.train_on": "assistant", "train.optim": "paged_adamw_8bit"},
        {"warmup_steps", "evals_per_epoch", "saves_per_epoch"}),
    "llamafactory-llama3_lora_sft.yaml": ({
        "model.name": "meta-llama/Meta-Llama-3-8B-Instruct", "template.name": "llama3", "lora.r": 8, "lora.alpha": 16,
        "lora.target_modules": "all-linear", "model.max_seq_length": 1024, "dataset.max_samples": 1000,
        "dataset.eval_fraction": 0.1, "train.eval_steps": 500, "model.dtype": "bfloat16"},
        {"dataset", "dataset[alpaca_en_demo]"}),
    "llamafactory-llama3_lora_sft_otfq.yaml": ({"model.load_in_4bit": True, "model.trust_remote_code": True,
                                                "lora.r": 8}, {"dataset", "dataset[alpaca_en_demo]"}),
    "llamafactory-llama3_full_sft.yaml": ({"lora": None, "train.learning_rate": 1e-5, "train.num_train_epochs": 3},
                                          {"deepspeed", "dataset", "dataset[alpaca_en_demo]"}),
    "llamafactory-llama3_lora_dpo.yaml": ({"train.stage": "dpo", "train.dpo.beta": 0.1,
                                           "train.dpo.loss_type": "sigmoid", "train.learning_rate": 5e-6},
                                          {"dataset"}),
    "llamafactory-llama3_lora_pretrain.yaml": ({"train.stage": "sft", "template.train_on": "all"}, {"dataset"}),
    "llamafactory-qwen3_lora_sft.yaml": ({"template.name": "qwen3", "train.report_to": "none"},
                                         {"dataset", "dataset[alpaca_en_demo]"}),
    "trl-example_config.yaml": ({
        "model.name": "Qwen/Qwen2.5-0.5B", "dataset.path": "stanfordnlp/imdb", "train.report_to": "none",
        "train.learning_rate": 1e-4, "train.lr_scheduler_type": "cosine", "train.stage": "sft", "lora": None}, set()),
}
REFUSED = {
    "axolotl-qlora-1b-kto.yaml": "rl: kto is KTO",
    "llamafactory-llama3_lora_kto.yaml": "stage: kto trains KTO",
    "llamafactory-llama3_lora_reward.yaml": "stage: rm trains a reward model",
    "trl-zero3.yaml": "Accelerate launch config",
    "trl-fsdp2.yaml": "Accelerate launch config",
}


def peers():
    if not PEERS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"peer configs missing at {PEERS} (CI must not skip these)")
        pytest.skip(f"peer configs not found at {PEERS}")
    return PEERS


def value_at(data: dict, dotted: str):
    for part in dotted.split("."):
        if data is None:
            return None
        data = data.get(part) if isinstance(data, dict) else getattr(data, part)
    return data


def test_every_fixture_is_covered_by_this_test():
    assert {p.name for p in peers().glob("*.y*ml")} == set(IMPORTED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_fixture_imports_with_every_key_accounted_for(name, tmp_path):
    source = peers() / name
    imported = importers.import_config(source)
    wanted, unsupported = IMPORTED[name]
    dumped = imported.recipe.model_dump(mode="json")
    for key, value in wanted.items():
        got = value_at(dumped, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, (key, got)
    rows = {r.key: r for r in imported.rows}
    listed = {r.key.split(".")[0] for r in imported.rows if "(not given)" not in r.key}
    source_keys = set(yaml.safe_load(source.read_text()))
    assert source_keys <= listed | {k.split("[")[0] for k in listed}, source_keys - listed  # nothing dropped
    assert {k for k, r in rows.items() if r.status == "unsupported"} == unsupported
    assert all(r.detail for r in imported.rows) and {r.status for r in imported.rows} <= set(importers.STATUSES)
    # the written recipe, header comments and all, loads back to the same recipe
    out = tmp_path / "imported.yaml"
    out.write_text(imported.yaml)
    again = recipe.load(out)
    assert again.model_dump(exclude={"output_dir"}) == imported.recipe.model_dump(exclude={"output_dir"})
    for key in unsupported:
        assert f"#   {key}: " in imported.yaml


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_configs_ftcli_cannot_train_are_refused_with_the_reason(name):
    with pytest.raises(BadInput, match=REFUSED[name]) as info:
        importers.import_config(peers() / name)
    assert info.value.hint


def test_a_hub_dataset_stays_a_hub_id_and_a_local_path_stays_local(tmp_path):
    local = tmp_path / "data" / "chats.jsonl"
    for path in ("org/some-dataset", str(local), "./data/chats.jsonl"):
        config = tmp_path / "ax.yml"
        config.write_text(yaml.safe_dump({"base_model": "builtin:tiny-llama3", "datasets": [{"path": path,
                                                                                            "type": "alpaca"}]}))
        assert importers.import_config(config).recipe.dataset.path == path
