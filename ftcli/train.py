"""`ftcli train`: the data flow of DESIGN.md, one function call per arrow.

recipe -> models.load -> chat.resolve -> models.add_lora -> data -> stages.sft -> run dir -> merge.
Nothing here prints: progress and notices go to the `log` callable and the callbacks that
cli.py passes in.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ftcli import chat, data, models, rundir
from ftcli.errors import BadInput, TrainingFailed
from ftcli.recipe import Recipe, to_yaml

NOT_YET = {"dpo": "DPO", "grpo": "GRPO"}
EXPORTS_NOW = {"safetensors", "adapter"}


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    merged_dir: Path | None = None
    metrics: list[dict] = field(default_factory=list)
    data_report: dict = field(default_factory=dict)
    sample_prompt: str | None = None
    sample_reply: str | None = None
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0


def check_supported(recipe: Recipe) -> None:
    """Refuse, before loading anything, what this version cannot do yet."""
    if recipe.train.stage in NOT_YET:
        raise BadInput(f"train.stage: {recipe.train.stage} is not yet supported by this version of ftcli "
                       f"({NOT_YET[recipe.train.stage]} arrives in a later release)", hint="use train.stage: sft")
    later = [f for f in recipe.export.formats if f not in EXPORTS_NOW]
    if later:
        raise BadInput(f"export.formats {later} are not yet supported by this version of ftcli",
                       hint=f"supported now: {sorted(EXPORTS_NOW)}; remove the others, e.g. --set 'export.formats=[]'")


def precision_flags(dtype: torch.dtype) -> dict:
    """Trainer mixed-precision flags for the weights' dtype (none on CPU fp32)."""
    if not torch.cuda.is_available():
        return {"use_cpu": True}
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def report_targets() -> list[str]:
    """TensorBoard when it is installed; never a service that needs an account."""
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def sample_conversation(rows: list[dict]) -> list[dict] | None:
    """The first row's conversation up to its first assistant reply, to show what the model learnt."""
    for row in rows:
        messages = row.get("messages")
        if messages:
            first_assistant = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return messages[:first_assistant]
    return None


def write_manifest(run_dir: Path, recipe: Recipe, facts: dict) -> None:
    (run_dir / "recipe.resolved.yaml").write_text(to_yaml(recipe, facts), encoding="utf-8")


def run(recipe: Recipe, *, overwrite: bool = False, dry_run: bool = False,
        log: Callable[[str], None] = lambda _: None, callbacks: list | None = None) -> RunResult:
    """Train as the recipe says and fill the run directory. Raises FtcliError subclasses.

    `dry_run` loads the model and the data and stops before training, writing nothing.
    """
    from transformers import set_seed

    check_supported(recipe)
    started = time.time()
    run_dir = Path(recipe.output_dir) if dry_run else rundir.prepare(recipe.output_dir, overwrite)
    result = RunResult(run_dir=run_dir)
    facts = {"versions": rundir.package_versions(), "git_commit": rundir.git_commit(), "status": "running"}
    if not dry_run:
        write_manifest(run_dir, recipe, facts)

    set_seed(recipe.train.seed)
    log(f"loading {recipe.model.name}")
    model, tokenizer = models.load(recipe.model)
    template = chat.resolve(recipe.template.name, tokenizer)
    log(f"chat template: {template.name} (end of turn {template.end_of_turn!r})")

    rows, fmt, report = data.read_rows(recipe.dataset)
    train_rows, eval_rows = data.split_eval(rows, recipe.dataset.eval_fraction, recipe.train.seed)
    length = recipe.model.max_seq_length
    train_set = data.build_sft(train_rows, template, tokenizer, recipe.template.train_on, length, report)
    eval_set = data.build_sft(eval_rows, template, tokenizer, recipe.template.train_on, length, report) if eval_rows else None
    report.train_rows, report.eval_rows = len(train_set), len(eval_set) if eval_set is not None else 0
    result.data_report = asdict(report)
    log(f"dataset: {report.train_rows} train / {report.eval_rows} eval rows ({fmt}); "
        f"{report.rows_skipped} skipped, {report.rows_truncated} truncated to {length} tokens")

    model = models.add_lora(model, recipe.lora, recipe.train.gradient_checkpointing)
    result.trainable_params, result.total_params = models.trainable_parameters(model)

    tokens_per_step = sum(len(ids) for ids in train_set["input_ids"]) / max(1, len(train_set))
    t = recipe.train
    facts.update({
        "dataset": {"format": fmt, "fingerprint": report.fingerprint, "train_rows": report.train_rows,
                    "eval_rows": report.eval_rows, "skipped": report.rows_skipped,
                    "truncated": report.rows_truncated, "without_targets": report.rows_without_targets},
        "effective_batch_sequences": t.per_device_train_batch_size * t.gradient_accumulation_steps,
        "mean_tokens_per_sequence": round(tokens_per_step, 1),
        "trainable_parameters": result.trainable_params,
        "kernels_applied": [],
    })
    if dry_run:
        result.seconds = time.time() - started
        return result
    write_manifest(run_dir, recipe, facts)

    from ftcli.stages import sft

    metrics_path = run_dir / "metrics.jsonl"
    trainer = sft.build_trainer(
        recipe, model, tokenizer, train_set, eval_set, str(run_dir / "checkpoints"),
        precision_flags(models.pick_dtype(recipe.model)), report_targets(),
        [rundir.MetricsFile(metrics_path), *(callbacks or [])],
    )
    try:
        trainer.train()
        if eval_set is not None:
            trainer.evaluate()
    except torch.OutOfMemoryError:
        raise TrainingFailed("out of memory during training",
                             hint="lower train.per_device_train_batch_size or model.max_seq_length, "
                                  "turn on train.gradient_checkpointing, or use model.load_in_4bit") from None
    result.metrics = rundir.read_metrics(metrics_path)
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    if losses and not all(torch.isfinite(torch.tensor(losses))):
        raise TrainingFailed("the training loss became NaN/Inf", hint="lower train.learning_rate")

    save_outputs(recipe, trainer.model, tokenizer, template, result)
    rundir.plot_losses(result.metrics, run_dir / "loss.png")

    conversation = sample_conversation(eval_rows or train_rows)
    if conversation:
        from ftcli.generate import reply

        result.sample_prompt = conversation[-1]["content"]
        result.sample_reply = reply(trainer.model, tokenizer, template, conversation)
    result.seconds = time.time() - started
    facts.update({"status": "done", "seconds": round(result.seconds, 1),
                  "final_loss": losses[-1] if losses else None})
    write_manifest(run_dir, recipe, facts)
    (run_dir / "summary.json").write_text(json.dumps({
        "data": result.data_report, "sample_prompt": result.sample_prompt, "sample_reply": result.sample_reply,
        "seconds": result.seconds}, indent=2), encoding="utf-8")
    return result


def save_outputs(recipe: Recipe, model, tokenizer, template, result: RunResult) -> None:
    """adapter/ for LoRA (model/ for a full finetune), and merged/ when export.formats asks for it."""
    run_dir = result.run_dir
    if recipe.lora is not None:
        with rundir.atomic_dir(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            tokenizer.chat_template = template.source
            tokenizer.save_pretrained(tmp)
        result.adapter_dir = run_dir / "adapter"
    else:
        from ftcli.export.merge import save_merged

        result.model_dir = save_merged(model, tokenizer, template.source, run_dir / "model")
    if "safetensors" in recipe.export.formats:
        from ftcli.export.merge import merge_adapter, save_merged

        if recipe.lora is None:
            merged = model
        else:
            merged = merge_adapter(recipe.model.name, result.adapter_dir, models.pick_dtype(recipe.model),
                                   recipe.model.trust_remote_code)
        result.merged_dir = save_merged(merged, tokenizer, template.source, run_dir / "merged")
