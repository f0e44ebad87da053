"""Axolotl configs (`axolotl train config.yml`) -> an ftcli recipe, with a row for every key."""

from __future__ import annotations

from ftcli.recipe.importers.table import (EMPTY, Mapping, flag, number, optimizer, precision, refuse, scheduler,
                                          targets, text, whole)

TEMPLATES = {"llama3": "llama3", "llama3_2_vision": "llama3", "gemma3": "gemma3", "qwen3": "qwen3",
             "qwen_25": "chatml", "chatml": "chatml", "phi_3": "phi3", "phi_35": "phi3", "phi_4": "phi4",
             "mistral_v1": "mistral", "mistral_v2v3": "mistral", "mistral_v3_tekken": "mistral",
             "tokenizer_default": "auto"}
REFUSED_RL = {"kto": "KTO (unpaired preference labels)", "orpo": "ORPO", "simpo": "SimPO",
              "grpo": "GRPO with Python reward functions (trl.reward_funcs)"}

DIRECT = {
    "base_model": ("model.name", text),
    "sequence_len": ("model.max_seq_length", whole),
    "load_in_4bit": ("model.load_in_4bit", flag),
    "trust_remote_code": ("model.trust_remote_code", flag),
    "lora_r": ("lora.r", whole),
    "lora_alpha": ("lora.alpha", number),
    "lora_dropout": ("lora.dropout", number),
    "micro_batch_size": ("train.per_device_train_batch_size", whole),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", whole),
    "num_epochs": ("train.num_train_epochs", number),
    "max_steps": ("train.max_steps", whole),
    "learning_rate": ("train.learning_rate", number),
    "lr_scheduler": ("train.lr_scheduler_type", scheduler),
    "optimizer": ("train.optim", optimizer),
    "warmup_ratio": ("train.warmup_ratio", number),
    "weight_decay": ("train.weight_decay", number),
    "max_grad_norm": ("train.max_grad_norm", number),
    "logging_steps": ("train.logging_steps", whole),
    "eval_steps": ("train.eval_steps", whole),
    "save_steps": ("train.save_steps", whole),
    "save_total_limit": ("train.save_total_limit", whole),
    "seed": ("train.seed", whole),
    "val_set_size": ("dataset.eval_fraction", number),
    "output_dir": ("output_dir", text),
    "rl_beta": ("train.dpo.beta", number),
}
IGNORED = {
    "model_type": "ftcli picks the model class from the model's config",
    "tokenizer_type": "ftcli loads the model's own tokenizer (AutoTokenizer)",
    "is_mistral_derived_model": "read from the model's config",
    "strict": "ftcli always rejects unknown recipe keys",
    "dataset_prepared_path": "ftcli tokenizes in memory on every run; nothing is cached to a folder",
    "eval_sample_packing": "evaluation batches are built the way training batches are",
    "pad_to_sequence_len": "ftcli pads each batch to its longest row (less compute); the memory plan is checked "
                           "against the full max_seq_length before training",
    "gradient_checkpointing_kwargs": "ftcli always checkpoints without re-entrant autograd",
    "flash_attention": "model.attn_implementation: auto picks FlashAttention where it is installed, SDPA elsewhere",
    "xformers_attention": "model.attn_implementation: auto picks the attention path",
    "sdp_attention": "model.attn_implementation: auto picks the attention path",
    "tf32": "ftcli leaves TF32 matmuls at PyTorch's setting; bf16 training does not use them",
    "group_by_length": "ftcli groups batches by length itself",
    "ddp_find_unused_parameters": "ftcli sets it for the model it trains",
    "remove_unused_columns": "ftcli keeps the columns each stage needs",
    "local_rank": "set by the launcher (ftcli train --nproc)",
    "debug": "no ftcli equivalent; the run directory logs every step",
    "lora_fan_in_fan_out": "read from the model's layers by PEFT",
    "lora_mlp_kernel": "ftcli's fused LoRA kernels are on by default on CUDA (train.kernels: auto)",
    "lora_qkv_kernel": "ftcli's fused LoRA kernels are on by default on CUDA (train.kernels: auto)",
    "lora_o_kernel": "ftcli's fused LoRA kernels are on by default on CUDA (train.kernels: auto)",
    "loss_watchdog_threshold": "ftcli stops at the first non-finite loss or gradient norm; no spike threshold",
    "loss_watchdog_patience": "ftcli stops at the first non-finite loss or gradient norm; no spike threshold",
    "eval_table_size": "W&B sample tables are not written; the run ends with a sample reply in summary.json",
    "eval_table_max_new_tokens": "W&B sample tables are not written",
    "eval_max_new_tokens": "W&B sample tables are not written",
    "special_tokens": "the doctor checks and fixes pad/bos/eos tokens (a pad token equal to eos would hide eos "
                      "from the loss); the tokenizer's own tokens are kept",
    "kto_desirable_weight": "KTO only",
}
UNSUPPORTED = {
    "load_in_8bit": "8-bit bases are not supported: use model.load_in_4bit: true (QLoRA) or a bf16 base",
    "hub_model_id": "ftcli does not push to the Hub: upload RUN_DIR/merged or the GGUF with `huggingface-cli upload`",
    "resume_from_checkpoint": "use `ftcli train RECIPE --resume` (the newest complete checkpoint of the run)",
    "evals_per_epoch": "set train.eval_steps (optimizer steps between evaluations)",
    "saves_per_epoch": "set train.save_steps (optimizer steps between checkpoints)",
    "warmup_steps": "set train.warmup_ratio (warmup steps / total steps)",
    "early_stopping_patience": "no early stopping: set train.max_steps, and eval_steps to watch eval loss",
    "deepspeed": "no DeepSpeed: use train.distributed: fsdp and `ftcli train --nproc N`",
    "fsdp_config": "FSDP is configured by ftcli: train.distributed: fsdp",
    "wandb_project": "set WANDB_PROJECT in the environment (train.report_to: [wandb] is set)",
    "wandb_entity": "set WANDB_ENTITY in the environment",
    "wandb_name": "set WANDB_NAME in the environment",
    "wandb_run_id": "set WANDB_RUN_ID in the environment",
    "wandb_watch": "set WANDB_WATCH in the environment",
    "wandb_log_model": "set WANDB_LOG_MODEL in the environment",
    "base_model_config": "ftcli reads the config from model.name",
}


def convert(data: dict) -> Mapping:
    m = Mapping("Axolotl", data)
    stage(m)
    adapter(m)
    datasets(m)
    chat_template(m)
    checkpointing(m)
    precision(m)
    extras(m)
    m.apply(DIRECT, IGNORED, UNSUPPORTED)
    return m


def stage(m: Mapping) -> None:
    rl = m.data.get("rl")
    if rl in REFUSED_RL:
        raise refuse("Axolotl", f"rl: {rl} is {REFUSED_RL[rl]}, which ftcli does not train",
                     "ftcli trains sft, dpo (loss types sigmoid, ipo, hinge, ...) and grpo with declared rewards")
    if rl in (None, False):
        m.put("rl", "train.stage", "sft") if "rl" in m.data else m.recipe.setdefault("train", {}).update(stage="sft")
    elif rl in ("dpo", "ipo"):
        m.put("rl", "train.stage", "dpo")
        if rl == "ipo":
            m.put("rl", "train.dpo.loss_type", "ipo")
    else:
        raise refuse("Axolotl", f"rl: {rl} is not a method ftcli knows", "use rl: dpo, or leave rl out for SFT")


def adapter(m: Mapping) -> None:
    kind = m.data.get("adapter")
    if kind in ("lora", "qlora"):
        m.recipe.setdefault("lora", {})
        m.add("adapter", "mapped", "lora: a LoRA adapter (rank, alpha and targets below)")
        if kind == "qlora":
            m.put("adapter", "model.load_in_4bit", True)
    elif kind is None:
        if "adapter" in m.data:
            m.ignore("adapter", "empty: a full finetune (no lora section)")
        for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_linear", "lora_target_modules"):
            if key in m.data:
                m.ignore(key, "no adapter: a full finetune")
    else:
        m.unsupported("adapter", f"adapter {kind!r} is not LoRA/QLoRA: the recipe trains a LoRA adapter instead")
    if m.data.get("lora_model_dir"):
        m.put("lora_model_dir", "model.adapter", str(m.data["lora_model_dir"]))
        m.recipe.pop("lora", None)
        for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_linear", "lora_target_modules"):
            if key in m.data:
                m.ignore(key, "the adapter in lora_model_dir keeps its own rank and targets")
        return
    elif "lora_model_dir" in m.data:
        m.ignore("lora_model_dir", EMPTY)
    if kind in ("lora", "qlora"):
        if m.data.get("lora_target_linear"):
            m.put("lora_target_linear", "lora.target_modules", "all-linear")
            if m.data.get("lora_target_modules"):
                m.ignore("lora_target_modules", "lora_target_linear already targets every linear layer")
        elif m.data.get("lora_target_modules"):
            m.put("lora_target_modules", "lora.target_modules", targets(m.data["lora_target_modules"]))


def datasets(m: Mapping) -> None:
    entries = m.data.get("datasets") or []
    if not entries:
        raise refuse("Axolotl", "it names no `datasets`", "add a dataset, or write the recipe's dataset section")
    first = entries[0]
    dataset_entry(m, first)
    for i, extra in enumerate(entries[1:], start=1):
        m.unsupported(f"datasets[{i}]", f"ftcli trains on one dataset: merge {extra.get('path')!r} into the first "
                                        "one's file, or train it as another stage of a pipeline")
    m.ignore("datasets", f"{len(entries)} dataset(s), rows below")


def dataset_entry(m: Mapping, entry: dict) -> None:
    kind = str(entry.get("type", ""))
    preference = m.recipe.get("train", {}).get("stage") == "dpo"
    m.put("datasets[0].path", "dataset.path", str(entry["path"]), "a hub id stays a hub id, a local path stays local")
    for key, value in entry.items():
        name = f"datasets[0].{key}"
        if key == "path":
            continue
        if key == "type":
            if kind == "alpaca":
                m.put(name, "dataset.format", "alpaca")
            elif kind.startswith("chat_template"):
                m.put(name, "dataset.format", "preference" if preference else "messages")
            else:
                m.unsupported(name, f"dataset type {kind!r}: convert the rows to messages, alpaca, "
                                    "prompt_completion, text or preference (docs/recipes.md)")
        elif key == "split":
            m.put(name, "dataset.split", str(value))
        elif key == "field_messages":
            m.put(name, "dataset.columns." + ("prompt" if preference else "messages"), str(value))
        elif key in ("field_chosen", "field_rejected"):
            m.put(name, "dataset.columns." + key.removeprefix("field_"), str(value))
        elif key == "message_property_mappings":
            if dict(value) in ({"role": "role", "content": "content"}, {"role": "from", "content": "value"}):
                m.ignore(name, "role/content and from/value messages are both read as they are")
            else:
                m.unsupported(name, f"messages keyed {dict(value)}: rename them to role/content")
        elif key == "roles":
            standard = all(list(v) == [k] for k, v in dict(value).items())
            m.ignore(name, "the standard role names") if standard else m.unsupported(
                name, "custom role names: rename them to system/user/assistant (human/gpt also work)")
        else:
            m.unsupported(name, f"dataset option {key!r} has no ftcli equivalent")
    if preference and not kind.startswith("chat_template"):
        m.recipe.setdefault("dataset", {})["format"] = "preference"


def chat_template(m: Mapping) -> None:
    name = m.data.get("chat_template")
    if name is None:
        if "chat_template" in m.data:
            m.ignore("chat_template", EMPTY)
        return
    if name in TEMPLATES:
        m.put("chat_template", "template.name", TEMPLATES[name])
    else:
        m.unsupported("chat_template", f"no ftcli template for {name!r}: template.name auto uses the tokenizer's "
                                       "own, or point template.name at a .jinja file")


def checkpointing(m: Mapping) -> None:
    value = m.data.get("gradient_checkpointing")
    if value is None:
        if "gradient_checkpointing" in m.data:
            m.ignore("gradient_checkpointing", EMPTY)
        return
    m.put("gradient_checkpointing", "train.gradient_checkpointing", "offload" if value == "offload" else flag(value))


def extras(m: Mapping) -> None:
    """Keys whose meaning depends on their value: packing, train_on_inputs, plugins, fsdp, W&B."""
    if "sample_packing" in m.data and m.data["sample_packing"] is not None:
        packing = flag(m.data["sample_packing"])
        if m.recipe.get("train", {}).get("stage") == "dpo":
            m.ignore("sample_packing", "packing applies to SFT only")
        else:
            m.put("sample_packing", "train.packing", packing)
    if m.data.get("train_on_inputs") is not None:
        m.put("train_on_inputs", "template.train_on", "all" if flag(m.data["train_on_inputs"]) else "assistant")
    for i, plugin in enumerate(m.data.get("plugins") or []):
        if "cut_cross_entropy" in str(plugin):
            m.ignore("plugins", "cut cross-entropy: ftcli's fused linear cross-entropy does the same, on by default")
        else:
            m.unsupported("plugins", f"plugin {plugin!r} has no ftcli equivalent")
    if m.data.get("fsdp"):
        m.put("fsdp", "train.distributed", "fsdp", "run with ftcli train --nproc N")
    if m.data.get("wandb_project"):
        m.put("wandb_project", "train.report_to", ["wandb"], "set WANDB_PROJECT in the environment")
