"""`ftcli train`: the data flow of DESIGN.md, one function call per arrow.

    recipe -> plan.for_recipe -> pretrained.load -> templates.resolve -> doctor -> stage.build_datasets
      -> lora -> checkpointing.apply -> stage.build_trainer -> patch.apply -> train -> outputs.save

Nothing here prints: progress and notices go to the `log` callable and the callbacks that the CLI
passes in. The memory plan is made once, before any weight is loaded, and every later step reads it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ftcli import doctor, rewards, stages
from ftcli.data import formats, templates
from ftcli.engine import checkpointing, distributed, memory, patch
from ftcli.engine import plan as memory_plan
from ftcli.errors import BadInput, TrainingFailed
from ftcli.export.run import check_export_ready
from ftcli.models import lora, pretrained
from ftcli.recipe import Recipe
from ftcli.runner import checkpoints, outcome, outputs, replace, rundir
from ftcli.runner.outputs import RunResult
from ftcli.runner.throughput import Throughput
from ftcli.runner.watch import LearningWatch
from ftcli.stages import guards, trainer_args
from ftcli.stages.base import Stage, TrainerSetup

__all__ = ["RunResult", "check_supported", "run"]


def check_supported(recipe: Recipe, world_size: int | None = None) -> None:
    """Refuse, before loading anything, what this version or this machine cannot do."""
    world_size = world_size or distributed.world_size()
    if recipe.train.distributed == "fsdp" and world_size > 1 and not torch.cuda.is_available():
        raise BadInput("train.distributed: fsdp needs CUDA GPUs (accelerate shards models only across GPUs)",
                       hint="on the CPU, use train.distributed: ddp")
    if recipe.train.stage == "grpo" and any(spec.type == "code_tests" for spec in recipe.train.grpo.rewards):
        rewards.require_sandbox("train.grpo.rewards")  # code_tests without bubblewrap: exit 2 before loading
    check_export_ready(recipe.export)  # unknown quant type or no llama-cpp-python: exit 2 before training
    trainer_args.report_targets(recipe.train.report_to)  # a report_to package missing: exit 2 before loading


@dataclass
class Loaded:
    """What the first arrows produce: the plan, the model and tokenizer, the template, the stage's datasets."""

    plan: memory_plan.Plan
    model: object
    tokenizer: object
    template: templates.ChatTemplate
    stage: Stage
    train_set: object
    eval_set: object | None
    train_rows: list
    eval_rows: list


def run(recipe: Recipe, *, overwrite: bool = False, dry_run: bool = False, resume: bool = False,
        allow_changes: bool = False, log: Callable[[str], None] = lambda _: None,
        callbacks: list | None = None) -> RunResult:
    """Train as the recipe says and fill the run directory. Raises FtcliError subclasses.

    `dry_run` loads the model and the data and stops before training, writing nothing.
    `resume` continues from the newest complete checkpoint in output_dir (`allow_changes`: even though the
    recipe's learning rate, steps or data changed since). With several processes (torchrun), only rank 0
    writes the run directory. However it ends, the manifest's status says how (outcome.py).
    """
    check_supported(recipe)
    started = time.time()
    run_dir, checkpoint = rundir.open_run_dir(recipe, overwrite=overwrite, dry_run=dry_run, resume=resume,
                                              allow_changes=allow_changes, log=log)
    manifest = rundir.Manifest(run_dir, recipe, enabled=distributed.is_main() and not dry_run,
                               resumed_from=checkpoint)
    with outcome.recorded(manifest, run_dir, owns_run_dir=manifest.enabled and checkpoint is None):
        return _run(recipe, run_dir, checkpoint, manifest, started, dry_run, log, callbacks)


def _run(recipe: Recipe, run_dir: Path, checkpoint: Path | None, manifest: rundir.Manifest, started: float,
         dry_run: bool, log, callbacks) -> RunResult:
    result = RunResult(run_dir=run_dir, stage=recipe.train.stage)
    loaded = load(recipe, manifest, result, log)
    if dry_run:
        result.seconds = time.time() - started
        return result
    manifest.write()
    trainer = build_trainer(recipe, loaded, run_dir, manifest, callbacks, log)
    if checkpoint is not None:
        log(f"resuming from {checkpoint}")
        if distributed.is_main():
            checkpoints.restore_metrics(checkpoint, run_dir)
    train(trainer, recipe, loaded.eval_set, checkpoint, manifest)
    loaded.stage.finish(trainer)
    result.metrics = rundir.read_metrics(run_dir / "metrics.jsonl")
    sharded = distributed.is_sharded(recipe)
    full_state = distributed.full_state_dict(trainer, sharded)  # a collective: every rank takes part
    if distributed.is_main():
        outputs.save(recipe, trainer.model, loaded.tokenizer, loaded.template, result, full_state,
                     sample_rows=loaded.eval_rows or loaded.train_rows, sharded=sharded, log=log)
    result.seconds = time.time() - started
    if distributed.is_main():
        outputs.finish_manifest(manifest, result)
    return result


def load(recipe: Recipe, manifest: rundir.Manifest, result: RunResult, log) -> Loaded:
    """plan -> model -> template -> doctor -> datasets -> adapter, each logged and recorded in the manifest."""
    from transformers import set_seed

    # The template name and the data first: a bad row stops the run before minutes of weight loading.
    templates.check_name(recipe.template.name)
    rows, fmt, report = formats.read_rows(recipe.dataset)
    train_rows, eval_rows = formats.split_eval(rows, recipe.dataset.eval_fraction, recipe.train.seed)
    config = pretrained.load_config(recipe.model)
    machine = memory_plan.Machine.current()
    plan = memory_plan.for_recipe(recipe, config, machine)  # made once: nothing below recomputes it
    if plan.estimate is not None:
        log(plan.describe_estimate())
        manifest.facts["memory_estimate_gib"] = round(plan.estimate.total / memory_plan.GiB, 2)
    memory_plan.check_fits(plan, recipe, machine)
    manifest.write()

    set_seed(recipe.train.seed)
    log(f"loading {recipe.model.name}")
    model, tokenizer = pretrained.load(recipe.model, config)
    template = templates.resolve(recipe.template.name, tokenizer)
    log(f"chat template: {template.name} (end of turn {template.end_of_turn!r})")
    # Fixes applied in memory travel with the saved tokenizer; errors stop the run here.
    tokenizer, template, findings = doctor.run_for_training(model, tokenizer, template, recipe, log)
    manifest.facts["doctor"] = doctor.as_facts(findings)

    stage = stages.for_recipe(recipe)
    train_set, eval_set = stage.build_datasets(recipe, train_rows, eval_rows, template, tokenizer, report)
    report.train_rows, report.eval_rows = len(train_set), len(eval_set) if eval_set is not None else 0
    result.data_report = asdict(report)
    log(f"dataset: {report.train_rows} train / {report.eval_rows} eval rows ({fmt}); "
        f"{report.rows_skipped} skipped, {report.rows_truncated} truncated to {recipe.model.max_seq_length} tokens, "
        f"{report.rows_without_targets} dropped with no trained token left")

    model = attach_adapter(recipe, model, plan, log)
    checkpointing.apply(model, plan)
    manifest.facts["checkpointing"] = plan.as_dict()
    log(f"activation checkpointing: {plan.describe()}")
    result.trainable_params, result.total_params = lora.trainable_parameters(model)
    manifest.facts.update(rundir.dataset_facts(recipe, fmt, report, train_set, result.trainable_params))
    return Loaded(plan, model, tokenizer, template, stage, train_set, eval_set, train_rows, eval_rows)


def attach_adapter(recipe: Recipe, model, plan: memory_plan.Plan, log):
    """A new LoRA adapter (or full weights), or the earlier run's adapter that model.adapter names."""
    recomputes = plan.recomputed > 0
    if recipe.model.adapter is None:
        return lora.add_lora(model, recipe.lora, recomputes)
    log(f"continuing the LoRA adapter in {recipe.model.adapter}")
    return lora.continue_adapter(model, recipe.model.adapter, recomputes)


def build_trainer(recipe: Recipe, loaded: Loaded, run_dir: Path, manifest: rundir.Manifest, callbacks, log):
    """The stage's trainer with the run's callbacks, then ftcli's kernels patched into its model (after the
    trainer exists, so that TRL's fused head is taken over too)."""
    flops = memory.flops_per_token(loaded.model.config, max(1, round(rundir.mean_tokens(loaded.train_set))),
                                   lora.trainable_parameters(loaded.model)[0])
    step_callbacks = [Throughput(flops), rundir.MetricsFile(run_dir / "metrics.jsonl"),  # Throughput first: it adds
                      checkpoints.MarkComplete(run_dir), guards.KillAfterSave(),    # to the dict the others log
                      guards.GradNormGuard(), replace.DiscardReplaced(run_dir), LearningWatch(recipe.train.stage, log),
                      *(callbacks or [])]
    setup = TrainerSetup(
        recipe=recipe, model=loaded.model, tokenizer=loaded.tokenizer, template=loaded.template,
        train_set=loaded.train_set, eval_set=loaded.eval_set, checkpoints_dir=str(run_dir / "checkpoints"),
        precision=trainer_args.precision_flags(pretrained.pick_dtype(recipe.model)),
        report_to=trainer_args.report_targets(recipe.train.report_to), callbacks=step_callbacks, log=log)
    with _tensorboard_dir(run_dir / "logs"):  # read when the trainer builds its TensorBoard callback
        trainer = loaded.stage.build_trainer(setup)
    manifest.facts["kernels_applied"] = apply_kernels(recipe, loaded.stage, trainer.model, log)
    return trainer


def apply_kernels(recipe: Recipe, stage: Stage, model, log) -> dict:
    """Patch the model instance with the kernel ops the stage takes; op -> modules replaced, for the manifest."""
    ops, note = stage.kernel_ops(recipe.train.kernels, distributed.is_sharded(recipe))
    if note:
        log(note)
    try:
        report = patch.apply(model, ops, log=log, impl="triton" if recipe.train.kernels is True else "auto")
    except patch.KernelsUnavailable as err:
        raise BadInput(f"train.kernels: {err}") from None
    applied = {op: len(names) for op, names in report.replaced.items() if names}
    return {"impl": report.impl, "ops": applied}  # patch.apply has logged the details


def train(trainer, recipe: Recipe, eval_set, checkpoint: Path | None, manifest: rundir.Manifest) -> None:
    """trainer.train (and evaluate), with a non-finite loss or an OOM turned into a TrainingFailed."""
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if eval_set is not None:
            trainer.evaluate()
    except guards.NonFiniteLoss as err:
        manifest.fail(str(err))
        last = checkpoints.latest(manifest.run_dir / "checkpoints")
        raise TrainingFailed(
            f"{err}; training stopped. Last good checkpoint: {last or 'none (set train.save_steps)'}. "
            f"metrics.jsonl keeps every step logged so far.",
            hint="likely causes: " + "; ".join(guards.LIKELY_CAUSES)) from None
    except torch.OutOfMemoryError:
        manifest.fail("CUDA out of memory")
        raise TrainingFailed("CUDA out of memory during training",
                             hint="try " + "; or ".join(memory_plan.advice(recipe))) from None


@contextlib.contextmanager
def _tensorboard_dir(folder: Path):
    """RUN_DIR/logs for TensorBoard's event files, unless the user set TENSORBOARD_LOGGING_DIR."""
    if "TENSORBOARD_LOGGING_DIR" in os.environ:
        yield
        return
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
