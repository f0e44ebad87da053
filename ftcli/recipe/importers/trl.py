"""TRL CLI configs (`trl sft --config config.yaml`, also dpo and grpo) -> an ftcli recipe, with a row for every key.

The keys are those of TRL's ScriptArguments, ModelConfig and the stage's config (SFTConfig / DPOConfig, which
extend transformers' TrainingArguments), so most map one to one onto the recipe, whose names follow them.
The config does not say its stage (it is the `trl sft|dpo|grpo` command): `ftcli import --stage` gives it,
default sft.
"""

from __future__ import annotations

from ftcli.recipe.importers.table import (TRAINING_ARGUMENTS, Mapping, dtype, flag, number, precision, refuse, targets,
                                          text, whole)

DIRECT = {
    "model_name_or_path": ("model.name", text),
    "trust_remote_code": ("model.trust_remote_code", flag),
    "attn_implementation": ("model.attn_implementation", text),
    "load_in_4bit": ("model.load_in_4bit", flag),
    "dtype": ("model.dtype", dtype),
    "torch_dtype": ("model.dtype", dtype),
    "max_length": ("model.max_seq_length", whole),
    "max_seq_length": ("model.max_seq_length", whole),
    "dataset_name": ("dataset.path", text),
    "dataset_train_split": ("dataset.split", text),
    "lora_r": ("lora.r", whole),
    "lora_alpha": ("lora.alpha", number),
    "lora_dropout": ("lora.dropout", number),
    "lora_target_modules": ("lora.target_modules", targets),
    "use_rslora": ("lora.use_rslora", flag),
    "use_dora": ("lora.use_dora", flag),
    **TRAINING_ARGUMENTS,
    "packing": ("train.packing", flag),
    "output_dir": ("output_dir", text),
    "beta": ("train.dpo.beta", number),
    "max_prompt_length": ("train.dpo.max_prompt_length", whole),
    "max_completion_length": ("train.dpo.max_completion_length", whole),
    "label_smoothing": ("train.dpo.label_smoothing", number),
    "precompute_ref_log_probs": ("train.dpo.precompute_ref_log_probs", flag),
}
GRPO_DIRECT = {
    "num_generations": ("train.grpo.num_generations", whole),
    "max_prompt_length": ("train.grpo.max_prompt_length", whole),
    "max_completion_length": ("train.grpo.max_completion_length", whole),
    "temperature": ("train.grpo.temperature", number),
    "top_p": ("train.grpo.top_p", number),
    "beta": ("train.grpo.beta", number),
    "epsilon": ("train.grpo.epsilon", number),
    "epsilon_high": ("train.grpo.epsilon_high", number),
    "num_iterations": ("train.grpo.num_iterations", whole),
}
IGNORED = {
    "dataset_text_field": "ftcli reads the `text` column (map another with dataset.columns)",
    "completion_only_loss": "prompt_completion rows are trained on the completion only",
    "bf16": "see model.dtype",
    "fp16": "see model.dtype",
    "tf32": "ftcli leaves TF32 matmuls at PyTorch's setting",
    "do_train": "`ftcli train` trains",
    "overwrite_output_dir": "pass --overwrite to `ftcli train`",
    "logging_dir": "TensorBoard logs go to RUN_DIR/logs (or TENSORBOARD_LOGGING_DIR)",
    "gradient_checkpointing_kwargs": "ftcli always checkpoints without re-entrant autograd",
    "dataloader_num_workers": "the data is tokenized in memory before training",
    "dataset_num_proc": "tokenizing runs in the training process",
    "per_device_eval_batch_size": "evaluation uses the training batch size",
    "eval_strategy": "ftcli evaluates every train.eval_steps, or once at the end when there is an eval split",
    "save_strategy": "ftcli saves every train.save_steps, or only at the end",
    "logging_strategy": "ftcli logs every train.logging_steps",
    "use_liger_kernel": "ftcli's own fused kernels are on by default on CUDA (train.kernels: auto)",
    "lora_task_type": "always CAUSAL_LM",
    "bnb_4bit_quant_type": "ftcli's 4-bit base is nf4 with double quantisation",
    "use_bnb_nested_quant": "ftcli's 4-bit base is nf4 with double quantisation",
}
UNSUPPORTED = {
    "env": "set these variables in the shell before `ftcli train`",
    "dataset_config": "hub dataset configurations are not selectable: save the subset with datasets and point "
                      "dataset.path at it",
    "dataset_test_split": "ftcli holds out dataset.eval_fraction of the training data for eval",
    "push_to_hub": "ftcli does not push to the Hub: upload RUN_DIR/merged or the GGUF with `huggingface-cli upload`",
    "hub_model_id": "ftcli does not push to the Hub",
    "resume_from_checkpoint": "use `ftcli train RECIPE --resume`",
    "warmup_steps": "set train.warmup_ratio (warmup steps / total steps)",
    "deepspeed": "no DeepSpeed: use train.distributed: fsdp and `ftcli train --nproc N`",
    "load_in_8bit": "8-bit bases are not supported: use load_in_4bit (QLoRA) or a bf16 base",
    "reward_funcs": "declare GRPO rewards in train.grpo.rewards (numeric_match, format, regex, a function...)",
    "reward_model_path": "ftcli's GRPO scores with declared rewards, not a reward model",
    "loss_type": "set train.dpo.loss_type or train.grpo.loss_type by name",
}


def convert(data: dict, stage: str | None) -> Mapping:
    m = Mapping("TRL", data)
    chosen = stage or "sft"
    if chosen not in ("sft", "dpo", "grpo"):
        raise refuse("TRL", f"--stage {chosen} is not an ftcli stage", "use --stage sft, dpo or grpo")
    m.recipe["train"] = {"stage": chosen}
    if chosen == "dpo":
        m.recipe["dataset"] = {"format": "preference"}
    if chosen == "grpo":
        m.recipe["dataset"] = {"format": "prompt"}
    if data.get("use_peft"):
        m.recipe["lora"] = {}
        m.add("use_peft", "mapped", "lora: a LoRA adapter (rank, alpha and targets below)")
    elif "use_peft" in data:
        m.ignore("use_peft", "false: a full finetune (no lora section)")
    if not data.get("use_peft"):
        for key in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora"):
            if key in data:
                m.ignore(key, "use_peft is off: a full finetune")
    if "gradient_checkpointing" in data:
        m.put("gradient_checkpointing", "train.gradient_checkpointing", flag(data["gradient_checkpointing"]))
    if "assistant_only_loss" in data:
        m.put("assistant_only_loss", "template.train_on", "assistant" if flag(data["assistant_only_loss"]) else "all")
    if "dtype" not in data and "torch_dtype" not in data:
        precision(m)
    direct = {k: v for k, v in DIRECT.items() if chosen == "dpo" or not v[0].startswith("train.dpo.")}
    if chosen == "grpo":
        direct.update(GRPO_DIRECT)
    for key in set(DIRECT) - set(direct):
        if key in data:
            m.ignore(key, f"a DPO setting; this is a {chosen} config (ftcli import --stage dpo for a DPO one)")
    m.apply(direct, IGNORED, UNSUPPORTED)
    if "dataset" not in m.recipe or "path" not in m.recipe["dataset"]:
        raise refuse("TRL", "it names no dataset_name", "add dataset_name (a hub id or a local file)")
    return m
