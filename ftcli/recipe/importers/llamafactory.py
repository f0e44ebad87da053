"""LLaMA-Factory configs (`llamafactory-cli train config.yaml`) -> an ftcli recipe, with a row for every key.

LLaMA-Factory names datasets by their entry in `data/dataset_info.json`; the importer reads that file (from
`dataset_dir`, default `data`, relative to the current folder or to the config) to find the file or hub id, the
formatting and the columns. Without it, the name is kept and marked for the user to replace.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.recipe.importers.table import (TRAINING_ARGUMENTS, Mapping, flag, number, precision, refuse, targets, text,
                                          whole)

TEMPLATES = {"llama3": "llama3", "qwen3": "qwen3", "qwen3_nothink": "qwen3", "qwen": "chatml", "gemma3": "gemma3",
             "mistral": "mistral", "phi": "phi3", "phi4": "phi4", "chatml": "chatml"}
STAGES = {"sft": "sft", "dpo": "dpo", "pt": "sft"}
REFUSED = {"kto": "KTO (unpaired preference labels)", "rm": "a reward model (a value head)",
           "ppo": "PPO with a reward model"}
PREF_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo"}
LORA_DEFAULT_RANK = 8  # LLaMA-Factory's own default, kept so the import trains what the source would

DIRECT = {
    "model_name_or_path": ("model.name", text),
    "trust_remote_code": ("model.trust_remote_code", flag),
    "cutoff_len": ("model.max_seq_length", whole),
    "max_samples": ("dataset.max_samples", whole),
    "lora_rank": ("lora.r", whole),
    "lora_alpha": ("lora.alpha", number),
    "lora_dropout": ("lora.dropout", number),
    "lora_target": ("lora.target_modules", targets),
    "pref_beta": ("train.dpo.beta", number),
    **TRAINING_ARGUMENTS,
    "val_size": ("dataset.eval_fraction", number),
    "output_dir": ("output_dir", text),
}
IGNORED = {
    "do_train": "`ftcli train` trains",
    "overwrite_cache": "ftcli tokenizes in memory on every run; there is no cache",
    "preprocessing_num_workers": "tokenizing runs in the training process",
    "dataloader_num_workers": "the data is tokenized in memory before training",
    "plot_loss": "ftcli always writes loss.png",
    "overwrite_output_dir": "pass --overwrite to `ftcli train`",
    "ddp_timeout": "the launcher's default timeout is used",
    "save_only_model": "ftcli always saves optimizer, scheduler and RNG states, so resume is exact",
    "per_device_eval_batch_size": "evaluation uses the training batch size",
    "eval_strategy": "ftcli evaluates every train.eval_steps, or once at the end when there is an eval split",
    "quantization_method": "ftcli's 4-bit base is bitsandbytes nf4",
    "dataset_dir": "used to find dataset_info.json",
    "flash_attn": "model.attn_implementation: auto picks FlashAttention where it is installed",
}
UNSUPPORTED = {
    "deepspeed": "no DeepSpeed: use train.distributed: fsdp and `ftcli train --nproc N` (or ddp, the default)",
    "resume_from_checkpoint": "use `ftcli train RECIPE --resume`",
    "warmup_steps": "set train.warmup_ratio (warmup steps / total steps)",
    "eval_dataset": "ftcli holds out dataset.eval_fraction of the training data for eval",
    "adapter_name_or_path": "set model.adapter to the folder of a LoRA adapter saved by ftcli or PEFT",
}


def convert(data: dict, config_dir: Path) -> Mapping:
    m = Mapping("LLaMA-Factory", data)
    stage(m)
    finetuning(m)
    dataset(m, config_dir)
    template(m)
    quantization(m)
    precision(m)
    m.apply(DIRECT, IGNORED, UNSUPPORTED)
    return m


def stage(m: Mapping) -> None:
    name = m.data.get("stage", "sft")
    if name in REFUSED:
        raise refuse("LLaMA-Factory", f"stage: {name} trains {REFUSED[name]}, which ftcli does not",
                     "ftcli trains sft, pt (as sft on text), dpo and grpo")
    if name not in STAGES:
        raise refuse("LLaMA-Factory", f"stage: {name} is not a stage ftcli knows", "use stage: sft, pt or dpo")
    note = "continued pretraining = SFT on text rows, loss on every token" if name == "pt" else ""
    m.put("stage", "train.stage", STAGES[name], note) if "stage" in m.data else m.recipe.setdefault(
        "train", {}).update(stage="sft")
    if name == "pt":
        m.put("stage", "template.train_on", "all")
    loss = m.data.get("pref_loss")
    if loss is not None:
        if loss in PREF_LOSSES:
            m.put("pref_loss", "train.dpo.loss_type", PREF_LOSSES[loss])
        else:
            raise refuse("LLaMA-Factory", f"pref_loss: {loss} is not a DPO loss ftcli trains",
                         "use pref_loss: sigmoid (DPO), ipo or hinge")


def finetuning(m: Mapping) -> None:
    kind = m.data.get("finetuning_type", "lora")
    if kind == "lora":
        if "finetuning_type" in m.data:
            m.add("finetuning_type", "mapped", "lora: a LoRA adapter")
        m.recipe.setdefault("lora", {})
        if "lora_rank" not in m.data:
            m.put("lora_rank (not given)", "lora.r", LORA_DEFAULT_RANK, "LLaMA-Factory's default rank")
        if "lora_alpha" not in m.data:
            rank = int(m.data.get("lora_rank", LORA_DEFAULT_RANK))
            m.put("lora_alpha (not given)", "lora.alpha", 2 * rank, "LLaMA-Factory's default: twice the rank")
        if "lora_target" not in m.data:
            m.put("lora_target (not given)", "lora.target_modules", "all-linear")
    elif kind == "full":
        m.add("finetuning_type", "mapped", "full finetune (no lora section)")
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target"):
            if key in m.data:
                m.ignore(key, "finetuning_type: full trains every weight")
    else:
        raise refuse("LLaMA-Factory", f"finetuning_type: {kind} is not supported",
                     "ftcli trains LoRA/QLoRA adapters (finetuning_type: lora) or every weight (full)")


def quantization(m: Mapping) -> None:
    bits = m.data.get("quantization_bit")
    if bits is None:
        return
    if int(bits) == 4:
        m.put("quantization_bit", "model.load_in_4bit", True, "QLoRA, bitsandbytes nf4")
    else:
        m.unsupported("quantization_bit", f"{bits}-bit bases are not supported: use 4 (QLoRA) or none")
    method = m.data.get("quantization_method", "bitsandbytes")
    if method != "bitsandbytes":
        m.unsupported("quantization_method", f"{method} quantization is not supported: ftcli uses bitsandbytes")


def template(m: Mapping) -> None:
    name = m.data.get("template")
    if name is None:
        return
    if name in TEMPLATES:
        note = "no <think> block unless a reply has one" if name == "qwen3_nothink" else ""
        m.put("template", "template.name", TEMPLATES[name], note)
    else:
        m.unsupported("template", f"no ftcli template for {name!r}: template.name auto uses the tokenizer's own, "
                                  "or point template.name at a .jinja file")


def dataset_info(dataset_dir: str, config_dir: Path) -> tuple[dict, Path] | tuple[None, None]:
    for folder in (Path(dataset_dir), config_dir / dataset_dir):
        path = folder / "dataset_info.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), folder
    return None, None


def dataset(m: Mapping, config_dir: Path) -> None:
    names = [n.strip() for n in str(m.data.get("dataset") or "").split(",") if n.strip()]
    if not names:
        raise refuse("LLaMA-Factory", "it names no `dataset`", "add dataset: NAME (an entry of dataset_info.json)")
    info, folder = dataset_info(str(m.data.get("dataset_dir", "data")), config_dir)
    entry = (info or {}).get(names[0])
    if entry is None:
        where = "dataset_info.json was not found" if info is None else "it is not in dataset_info.json"
        m.put("dataset", "dataset.path", names[0])
        m.unsupported("dataset", f"{names[0]!r} is a LLaMA-Factory dataset name and {where} (looked in "
                                 f"{m.data.get('dataset_dir', 'data')}/): set dataset.path to its file or hub id")
    else:
        registered(m, names[0], entry, folder)
    for extra in names[1:]:
        m.unsupported(f"dataset[{extra}]", f"ftcli trains on one dataset: merge {extra!r} into the first one's "
                                           "file, or train it as another stage of a pipeline")


def registered(m: Mapping, name: str, entry: dict, folder: Path) -> None:
    """A dataset_info.json entry: where the rows are, their formatting and column names."""
    if "file_name" in entry:
        m.put("dataset", "dataset.path", str(folder / entry["file_name"]), f"{name} in dataset_info.json")
    elif "hf_hub_url" in entry:
        m.put("dataset", "dataset.path", entry["hf_hub_url"], f"{name}: a hub dataset")
    else:
        m.unsupported("dataset", f"{name!r} is neither a file nor a Hugging Face dataset: set dataset.path")
        return
    columns, stage = entry.get("columns", {}), m.recipe.get("train", {}).get("stage")
    if entry.get("split"):
        m.put("dataset", "dataset.split", entry["split"])
    if entry.get("ranking"):
        m.put("dataset", "dataset.format", "preference")
        theirs = {"prompt": columns.get("messages", columns.get("prompt", "prompt")),
                  "chosen": columns.get("chosen", "chosen"), "rejected": columns.get("rejected", "rejected")}
    elif entry.get("formatting") == "sharegpt":
        m.put("dataset", "dataset.format", "messages")
        theirs = {"messages": columns.get("messages", "conversations")}
    elif m.data.get("stage") == "pt":
        m.put("dataset", "dataset.format", "text")
        theirs = {"text": columns.get("prompt", "text")}
    else:
        m.put("dataset", "dataset.format", "alpaca" if stage != "dpo" else "preference")
        theirs = {"instruction": columns.get("prompt", "instruction"), "input": columns.get("query", "input"),
                  "output": columns.get("response", "output")}
    mapped = {ours: col for ours, col in theirs.items() if ours != col}
    if mapped:
        m.put("dataset", "dataset.columns", mapped)
    if set(columns) - {"messages", "prompt", "query", "response", "chosen", "rejected"}:
        m.unsupported(f"dataset[{name}].columns", f"columns {sorted(set(columns) - {'messages', 'prompt', 'query', 'response'})} "
                                 "(tools, images, system, history) are not read by ftcli")
    if entry.get("tags") and entry["tags"].get("role_tag", "from") not in ("role", "from"):
        m.unsupported(f"dataset[{name}].tags", "custom role tags: rename the message keys to role/content")

