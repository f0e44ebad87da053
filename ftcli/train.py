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

from ftcli import chat, checkpointing, checkpoints, data, distributed, guards, memory, models, rundir
from ftcli.errors import BadInput, TrainingFailed
from ftcli.hf_compat import enable_checkpointing
from ftcli.recipe import Recipe, to_yaml


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    merged_dir: Path | None = None
    export_dir: Path | None = None
    gguf_path: Path | None = None
    gguf_reply: str | None = None
    metrics: list[dict] = field(default_factory=list)
    data_report: dict = field(default_factory=dict)
    sample_prompt: str | None = None
    sample_reply: str | None = None
    seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0


def check_supported(recipe: Recipe, world_size: int | None = None) -> None:
    """Refuse, before loading anything, what this version or this machine cannot do."""
    world_size = world_size or distributed.world_size()
    if recipe.train.distributed == "fsdp" and world_size > 1 and not torch.cuda.is_available():
        raise BadInput("train.distributed: fsdp needs CUDA GPUs (accelerate shards models only across GPUs)",
                       hint="on the CPU, use train.distributed: ddp")
    if {"gguf", "ollama"} & set(recipe.export.formats):
        from ftcli.export.run import check_export_ready

        check_export_ready(recipe.export)  # unknown quant type or no llama-cpp-python: exit 2 before training


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
        if row.get("prompt") and "messages" not in row:  # preference and prompt rows (DPO, GRPO)
            from ftcli.stages.common import as_messages

            return as_messages(row["prompt"], "user")
        messages = row.get("messages")
        if messages:
            first_assistant = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return messages[:first_assistant]
    return None


def write_manifest(run_dir: Path, recipe: Recipe, facts: dict) -> None:
    (run_dir / "recipe.resolved.yaml").write_text(to_yaml(recipe, facts), encoding="utf-8")


def run(recipe: Recipe, *, overwrite: bool = False, dry_run: bool = False, resume: bool = False,
        log: Callable[[str], None] = lambda _: None, callbacks: list | None = None) -> RunResult:
    """Train as the recipe says and fill the run directory. Raises FtcliError subclasses.

    `dry_run` loads the model and the data and stops before training, writing nothing.
    `resume` continues from the newest complete checkpoint in output_dir.
    With several processes (torchrun), only rank 0 writes the run directory.
    """
    from transformers import set_seed

    check_supported(recipe)
    started = time.time()
    main = distributed.is_main()
    run_dir, checkpoint = open_run_dir(recipe, overwrite=overwrite, dry_run=dry_run, resume=resume)
    result = RunResult(run_dir=run_dir)
    facts = {"versions": rundir.package_versions(), "git_commit": rundir.git_commit(), "status": "running",
             "world_size": distributed.world_size(), "seed": recipe.train.seed,
             "resumed_from": str(checkpoint) if checkpoint else None}
    write = (lambda: write_manifest(run_dir, recipe, facts)) if main and not dry_run else (lambda: None)
    estimate = log_memory_estimate(recipe, log)
    if estimate is not None:
        facts["memory_estimate_gib"] = round(estimate.total / memory.GiB, 2)
    write()

    set_seed(recipe.train.seed)
    log(f"loading {recipe.model.name}")
    model, tokenizer = models.load(recipe.model)
    template = chat.resolve(recipe.template.name, tokenizer)
    log(f"chat template: {template.name} (end of turn {template.end_of_turn!r})")
    from ftcli import doctor  # issue 7: fixes applied in memory travel with the saved tokenizer; errors stop here
    tokenizer, template, findings = doctor.run_for_training(model, tokenizer, template, recipe, log)
    facts["doctor"] = doctor.as_facts(findings)

    rows, fmt, report = data.read_rows(recipe.dataset)
    train_rows, eval_rows = data.split_eval(rows, recipe.dataset.eval_fraction, recipe.train.seed)
    length = recipe.model.max_seq_length
    train_set, eval_set = build_datasets(recipe, train_rows, eval_rows, template, tokenizer, report)
    reward_funcs = None
    if recipe.train.stage == "grpo":  # every reward is checked against the data before any training
        from ftcli.stages import grpo

        reward_funcs = grpo.build_rewards(recipe, train_set)
    report.train_rows, report.eval_rows = len(train_set), len(eval_set) if eval_set is not None else 0
    result.data_report = asdict(report)
    log(f"dataset: {report.train_rows} train / {report.eval_rows} eval rows ({fmt}); "
        f"{report.rows_skipped} skipped, {report.rows_truncated} truncated to {length} tokens")

    plan = checkpointing.plan_for(recipe, model.config)
    if recipe.model.adapter is not None:
        model = continue_adapter(model, recipe.model.adapter, plan.recomputed > 0)
        log(f"continuing the LoRA adapter in {recipe.model.adapter}")
    else:
        model = models.add_lora(model, recipe.lora, plan.recomputed > 0)
    checkpointing.apply(model, plan)
    facts["checkpointing"] = plan.as_dict()
    log(f"activation checkpointing: {plan.describe()}")
    result.trainable_params, result.total_params = models.trainable_parameters(model)

    t = recipe.train
    sequences = t.per_device_train_batch_size * t.gradient_accumulation_steps * distributed.world_size()
    facts.update({
        "dataset": {"format": fmt, "fingerprint": report.fingerprint, "train_rows": report.train_rows,
                    "eval_rows": report.eval_rows, "skipped": report.rows_skipped,
                    "truncated": report.rows_truncated, "without_targets": report.rows_without_targets},
        "effective_batch_sequences": sequences,
        "effective_batch_tokens": round(sequences * mean_tokens(train_set)),  # mean, before padding
        "mean_tokens_per_sequence": round(mean_tokens(train_set), 1),
        "trainable_parameters": result.trainable_params,
        "kernels_applied": [],
    })
    if dry_run:
        result.seconds = time.time() - started
        return result
    write()

    metrics_path = run_dir / "metrics.jsonl"
    step_callbacks = [rundir.MetricsFile(metrics_path), checkpoints.MarkComplete(run_dir), guards.KillAfterSave(),
                      guards.GradNormGuard(), *(callbacks or [])]
    trainer, stage = build_trainer(recipe, model, tokenizer, template, train_set, eval_set, run_dir,
                                   step_callbacks, reward_funcs, log)
    facts["kernels_applied"] = apply_kernels(recipe, trainer.model, log)
    if checkpoint is not None:
        log(f"resuming from {checkpoint}")
        if main:
            checkpoints.restore_metrics(checkpoint, run_dir)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if eval_set is not None:
            trainer.evaluate()
    except guards.NonFiniteLoss as err:
        facts["status"] = f"failed: {err}"
        write()
        last = checkpoints.latest(run_dir / "checkpoints")
        raise TrainingFailed(
            f"{err}; training stopped. Last good checkpoint: {last or 'none (set train.save_steps)'}. "
            f"metrics.jsonl keeps every step logged so far.",
            hint="likely causes: " + "; ".join(guards.LIKELY_CAUSES)) from None
    except torch.OutOfMemoryError:
        facts["status"] = "failed: CUDA out of memory"
        write()
        raise TrainingFailed("CUDA out of memory during training",
                             hint="try " + "; or ".join(memory.advice(recipe))) from None
    if hasattr(stage, "finish"):
        stage.finish(trainer)
    result.metrics = rundir.read_metrics(metrics_path)
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    sharded = distributed.is_sharded(recipe)
    full_state = distributed.full_state_dict(trainer, sharded)
    if not main:
        result.seconds = time.time() - started
        return result

    save_outputs(recipe, trainer.model, tokenizer, template, result, full_state)
    rundir.plot_losses(result.metrics, run_dir / "loss.png")

    conversation = sample_conversation(eval_rows or train_rows)
    if conversation:
        from ftcli.generate import reply

        result.sample_prompt = conversation[-1]["content"]
        if sharded:  # a sharded model cannot generate on rank 0 alone; the exported GGUF still answers below
            log("sample reply: skipped for the in-memory model under FSDP (its weights are sharded)")
        else:
            result.sample_reply = reply(trainer.model, tokenizer, template, conversation)
        if result.gguf_path is not None:  # the same question, answered by llama.cpp from the exported GGUF
            from ftcli.chat_cmd import ChatSession

            session = ChatSession(result.gguf_path, max_new_tokens=64)
            try:
                result.gguf_reply = "".join(session.reply(conversation))
            finally:
                session.close()
    result.seconds = time.time() - started
    facts.update({"status": "done", "seconds": round(result.seconds, 1),
                  "final_loss": losses[-1] if losses else None})
    if torch.cuda.is_available():  # measured against the pre-flight estimate in docs/benchmarks.md
        facts["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / memory.GiB, 2)
    write()
    (run_dir / "summary.json").write_text(json.dumps({
        "data": result.data_report, "sample_prompt": result.sample_prompt, "sample_reply": result.sample_reply,
        "gguf": str(result.gguf_path) if result.gguf_path else None, "gguf_reply": result.gguf_reply,
        "seconds": result.seconds}, indent=2), encoding="utf-8")
    return result


def open_run_dir(recipe: Recipe, *, overwrite: bool, dry_run: bool, resume: bool) -> tuple[Path, Path | None]:
    """The run directory (rank 0 creates it, other ranks wait for it) and the checkpoint to resume from."""
    run_dir = Path(recipe.output_dir)
    if dry_run:
        return run_dir, None
    if resume:
        checkpoint = checkpoints.latest(run_dir / "checkpoints")
        if checkpoint is None:
            raise BadInput(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}",
                           hint="checkpoints are written every train.save_steps; without one, start again "
                                "with --overwrite")
        return run_dir, checkpoint
    if distributed.is_main():
        rundir.prepare(run_dir, overwrite)
    else:
        distributed.wait_for(run_dir / "recipe.resolved.yaml")
    return run_dir, None


def resolve_resume(recipe: Recipe, recipe_path: Path) -> Recipe:
    """`--resume` with a timestamped output_dir means the newest earlier run of this recipe."""
    import re

    if Path(recipe.output_dir).exists() or "{timestamp}" not in Path(recipe_path).read_text(encoding="utf-8"):
        return recipe
    stamp = re.compile(r"\d{8}-\d{6}")
    target = Path(recipe.output_dir)
    earlier = sorted(p for p in target.parent.glob("*")
                     if p.is_dir() and stamp.sub("", p.name) == stamp.sub("", target.name)) if target.parent.exists() else []
    if not earlier:
        raise BadInput(f"--resume: no earlier run of {Path(recipe_path).name} under {target.parent}",
                       hint="set output_dir to the run to resume: --set output_dir=runs/<name>")
    return recipe.model_copy(update={"output_dir": str(earlier[-1])})


def log_memory_estimate(recipe: Recipe, log) -> memory.Estimate | None:
    """Print the pre-flight estimate; on a GPU, refuse a run that cannot fit."""
    estimate = memory.estimate_for(recipe)
    if estimate is None:
        return None
    log(f"estimated peak GPU memory: {estimate.total / memory.GiB:.1f} GiB "
        f"(weights {estimate.weights / memory.GiB:.1f}, activations {estimate.activations / memory.GiB:.1f})")
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if estimate.total > free:
            raise BadInput(f"this recipe needs about {estimate.total / memory.GiB:.1f} GiB of GPU memory, "
                           f"{free / memory.GiB:.1f} GiB are free",
                           hint="try " + "; or ".join(memory.advice(recipe)))
    return estimate


def apply_kernels(recipe: Recipe, model, log) -> dict:
    """Patch the model instance with ftcli's kernels (after the trainer exists, so TRL's fused head is
    taken over too); returns op -> number of modules replaced, for the manifest."""
    from ftcli import patch

    ops = recipe.train.kernels
    sharded = distributed.is_sharded(recipe)
    if (recipe.train.stage != "sft" or sharded) and ops not in (False, None):
        # DPO and GRPO score tokens through their own log-prob hook (stages/logprobs.py). Under FSDP the
        # fused loss would read lm_head's weight outside lm_head's forward, where FSDP gathers it.
        chosen = patch.ALL_OPS if ops in ("auto", True) else ops
        ops = [op for op in chosen if op != "fused_linear_ce"]
        if sharded and recipe.train.stage == "sft":
            log("kernels: fused_linear_ce off under FSDP (the model's own lm_head + loss run instead)")
    try:
        report = patch.apply(model, ops, log=log, impl="triton" if recipe.train.kernels is True else "auto")
    except patch.KernelsUnavailable as err:
        raise BadInput(f"train.kernels: {err}") from None
    applied = {op: len(names) for op, names in report.replaced.items() if names}
    return {"impl": report.impl, "ops": applied}  # patch.apply has logged the details


def build_datasets(recipe: Recipe, train_rows: list, eval_rows: list, template, tokenizer, report):
    """The stage's train (and eval) datasets: SFT ids/labels, DPO pairs, or GRPO rendered prompts."""
    stage = recipe.train.stage
    if stage == "sft":
        length = recipe.model.max_seq_length
        def build(rows):
            return data.build_sft(rows, template, tokenizer, recipe.template.train_on, length, report)
    else:
        from ftcli.stages import dpo, grpo

        module = dpo if stage == "dpo" else grpo
        def build(rows):
            return module.build_dataset(rows, template, tokenizer, recipe, report)
    return build(train_rows), (build(eval_rows) if eval_rows else None)


def mean_tokens(dataset) -> float:
    """Mean tokens per training sequence (a DPO pair counts its prompt and chosen reply)."""
    columns = dataset.column_names
    if "input_ids" in columns:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    elif "prompt_ids" in columns:
        lengths = [len(p) + len(c) for p, c in zip(dataset["prompt_ids"], dataset["chosen_ids"])]
    else:
        return 0.0  # GRPO: completions are generated during training
    return sum(lengths) / max(1, len(lengths))


def continue_adapter(model, path: str, gradient_checkpointing: bool):
    """Load a LoRA adapter saved by an earlier run (e.g. runs/sft/adapter), trainable, on the base model."""
    from peft import PeftModel

    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise BadInput(f"model.adapter {path!r}: no adapter_config.json there",
                       hint="point it at the adapter/ folder of a finished LoRA run, e.g. runs/sft-.../adapter")
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as err:
        raise BadInput(f"model.adapter {path!r} does not fit model.name: {str(err).splitlines()[0]}",
                       hint="use the same base model the adapter was trained on") from None


def build_trainer(recipe: Recipe, model, tokenizer, template, train_set, eval_set, run_dir: Path, callbacks: list,
                  reward_funcs, log):
    """The stage's TRL trainer, and the stage module (its `finish` runs after training)."""
    from ftcli.stages import dpo, grpo, sft

    common = dict(checkpoints_dir=str(run_dir / "checkpoints"), report_to=report_targets(), callbacks=callbacks,
                  precision=precision_flags(models.pick_dtype(recipe.model)))
    if recipe.train.stage == "dpo":
        return dpo.build_trainer(recipe, model, tokenizer, train_set, eval_set, log=log, **common), dpo
    if recipe.train.stage == "grpo":
        return grpo.build_trainer(recipe, model, tokenizer, template, train_set, eval_set,
                                  reward_funcs=reward_funcs, log=log, **common), grpo
    return sft.build_trainer(recipe, model, tokenizer, train_set, eval_set, **common), sft


def save_outputs(recipe: Recipe, model, tokenizer, template, result: RunResult, state_dict=None) -> None:
    """adapter/ for LoRA (model/ for a full finetune), and merged/ when export.formats asks for it.
    `state_dict`: the full weights gathered from FSDP shards, when the model's own are sharded."""
    run_dir = result.run_dir
    if recipe.lora is not None or recipe.model.adapter is not None:
        with rundir.atomic_dir(run_dir / "adapter") as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.chat_template = template.source
            tokenizer.save_pretrained(tmp)
        result.adapter_dir = run_dir / "adapter"
    else:
        from ftcli.export.merge import save_merged

        result.model_dir = save_merged(model, tokenizer, template.source, run_dir / "model", state_dict)
    if "safetensors" in recipe.export.formats:
        from ftcli.export.merge import merge_adapter, save_merged

        if recipe.lora is None and recipe.model.adapter is None:
            merged, merged_state = model, state_dict
        else:
            merged, merged_state = merge_adapter(recipe.model.name, result.adapter_dir,
                                                 models.pick_dtype(recipe.model), recipe.model.trust_remote_code), None
            if recipe.model.doctor == "fix":  # the base was reloaded: its embedding/config fixes are needed again
                from ftcli import doctor

                doctor.reapply(merged, tokenizer, template, recipe)
        result.merged_dir = save_merged(merged, tokenizer, template.source, run_dir / "merged", merged_state)
    if {"gguf", "ollama"} & set(recipe.export.formats):
        from ftcli.export.run import export_after_training

        export_after_training(run_dir, recipe.export)  # RUN_DIR/export/: GGUF files, Modelfile, export-report.json
        result.export_dir = run_dir / "export"
        ggufs = sorted(result.export_dir.glob("model-*.gguf"))
        result.gguf_path = next((g for g in ggufs if g.name == "model-f16.gguf"), ggufs[0] if ggufs else None)
