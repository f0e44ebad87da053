"""`ftcli validate` and `ftcli train`: recipe in, run directory and a sample reply out."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ftcli.cli.app import RecipeArg, SetOpt, app, console, errors, fail
from ftcli.cli.cmd_pipeline import print_pipeline_plan, train_pipeline
from ftcli.errors import BadInput, FtcliError


def _load(recipe_path: Path, overrides: list[str] | None):
    """A Recipe, or a Pipeline for a recipe with `stages:`."""
    from ftcli import recipe

    return recipe.load_any(recipe_path, overrides or [])


@app.command()
def validate(recipe_path: RecipeArg, set_: SetOpt = None,
             memory: Annotated[bool, typer.Option("--memory", help="Also estimate peak GPU memory (shown anyway on a "
                                                              "machine with a GPU; else for an 80 GiB GPU).")] = False,
             ) -> None:
    """Check a recipe (every stage of a pipeline) and print it resolved: defaults filled, overrides applied,
    canonical names."""
    import torch

    from ftcli.data import templates
    from ftcli.recipe import Pipeline, to_yaml

    try:
        recipe = _load(recipe_path, set_)
        for each in ([s.recipe for s in recipe.stages] if isinstance(recipe, Pipeline) else [recipe]):
            templates.check_name(each.template.name)  # what `train` would refuse, said here too
    except FtcliError as err:
        fail(err)
    console.print(f"[green]valid[/] {recipe_path}")
    if isinstance(recipe, Pipeline):
        print_pipeline_plan(recipe, resolved=True)
        return
    console.print(to_yaml(recipe), markup=False)
    if memory or torch.cuda.is_available():  # on a machine without a GPU the figure is noise unless asked for
        _print_memory(recipe)


def _print_memory(recipe) -> None:
    """The pre-flight estimate of peak GPU memory, one line per part (for an 80 GiB GPU where there is none)."""
    from ftcli.engine import memory, plan
    from ftcli.models import pretrained

    reason = "the model config could not be read"
    try:
        config = pretrained.load_config(recipe.model)
        estimate = plan.for_recipe(recipe, config, plan.Machine.current().with_reference_gpu()).estimate
    except FtcliError as err:  # offline hub id, unusual config: `ftcli train` will stop on it
        estimate, reason = None, err.message
    except Exception:  # noqa: BLE001 (an unusual config: the estimate is optional here)
        estimate = None
    if estimate is None:
        console.print(f"memory estimate: unavailable ({reason})", markup=False)
        return
    parts = ", ".join(f"{name} {value / memory.GiB:.1f}" for name, value in estimate.rows()[:-1])
    console.print(f"estimated peak GPU memory: {estimate.total / memory.GiB:.1f} GiB ({parts})", markup=False)


@app.command()
def train(
    recipe_path: RecipeArg,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Load the model and data, print the plan, train nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in output_dir.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in output_dir.")] = False,
    allow_changes: Annotated[bool, typer.Option("--allow-changes", help="With --resume: continue even though the "
                                                "recipe's learning rate, steps or data changed (they are listed).")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes on this machine, one per GPU (CPU: gloo).")] = 1,
    from_: Annotated[Optional[str], typer.Option("--from", help="Pipeline: re-run from this stage (its name or "
                                                 "number) onwards, keeping the finished stages before it.")] = None,
) -> None:
    """Finetune a model as the recipe says and write the run directory (a pipeline runs every stage in turn)."""
    from ftcli.engine import distributed
    from ftcli.recipe import Pipeline
    from ftcli.runner import rundir
    from ftcli.runner import train as training

    if not distributed.is_main():
        console.quiet = True  # only rank 0 reports progress; every rank still reports its errors
    recipe = None
    try:
        if allow_changes and not resume:
            raise BadInput("--allow-changes goes with --resume", hint="ftcli train RECIPE --resume --allow-changes")
        recipe = _load(recipe_path, set_)
        if isinstance(recipe, Pipeline) or from_ is not None:
            code = train_pipeline(recipe, recipe_path, dry_run=dry_run, overwrite=overwrite, resume=resume,
                                  start=from_, nproc=nproc, progress=_progress, show_result=print_result,
                                  launch=lambda output_dir: _launch(recipe_path, set_ or [], output_dir, nproc,
                                                                    start=from_, overwrite=overwrite, resume=resume))
            if code:
                raise typer.Exit(code)
            return
        if resume:
            recipe = rundir.resolve_resume(recipe, recipe_path)
        if nproc > 1 and distributed.world_size() == 1:
            training.check_supported(recipe, world_size=nproc)  # exit 2 here, before starting processes
            raise typer.Exit(_launch(recipe_path, set_ or [], recipe.output_dir, nproc,
                                     dry_run=dry_run, overwrite=overwrite, resume=resume,
                                     allow_changes=allow_changes))
        _print_plan(recipe)
        with _progress(recipe.train.stage) as progress, _sigterm_interrupts():
            result = training.run(recipe, overwrite=overwrite, dry_run=dry_run, resume=resume,
                                  allow_changes=allow_changes,
                                  log=lambda msg: console.print(f"[dim]·[/] {escape(msg)}", highlight=False),
                                  callbacks=[progress])
    except FtcliError as err:
        if distributed.world_size() > 1:
            err.message = f"[rank {distributed.rank()}] {err.message}"
        fail(err)
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        if recipe is not None and not dry_run:
            errors.print(_resume_hint(recipe_path, set_ or [], recipe.output_dir), markup=False)
        raise typer.Exit(130)
    if dry_run:
        console.print(f"[green]dry run ok[/]: {result.trainable_params:,} trainable of "
                      f"{result.total_params:,} parameters; nothing was trained or written")
        return
    print_result(result)


@contextlib.contextmanager
def _sigterm_interrupts():
    """`kill PID` (SIGTERM, as schedulers and `timeout` send) ends a run like Ctrl-C: status `interrupted`, an
    --overwrite'd run put back, and the resume command printed, instead of Python dying on the spot."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(recipe_path: Path, overrides: list[str], output_dir: str) -> str:
    """What to type to continue an interrupted run (or why it cannot be continued yet)."""
    import shlex

    from ftcli.runner import checkpoints

    latest = checkpoints.latest(Path(output_dir) / "checkpoints")
    if latest is None:
        return (f"no checkpoint was complete yet in {output_dir}, so there is nothing to resume (train.save_steps "
                "sets how often one is written); run the same command with --overwrite to start again")
    words = ["ftcli", "train", str(recipe_path)]
    for item in [*(o for o in overrides if not o.startswith("output_dir=")), f"output_dir={output_dir}"]:
        words += ["--set", item]
    return f"continue from {latest.name} with:\n  {shlex.join([*words, '--resume'])}"


def _launch(recipe_path: Path, overrides: list[str], output_dir: str, nproc: int, start: str | None = None,
            **flags) -> int:
    """Re-run this command in `nproc` processes, all writing to the one output_dir resolved here."""
    import json as _json

    from ftcli.engine import distributed

    argv = ["train", str(recipe_path)]
    for item in [*overrides, f"output_dir={_json.dumps(output_dir)}"]:
        argv += ["--set", item]
    argv += [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]
    argv += ["--from", start] if start is not None else []
    console.print(f"launching {nproc} processes (torchrun)", markup=False)
    return distributed.launch(nproc, argv, echo=lambda msg: errors.print(msg, markup=False))


def _print_plan(recipe) -> None:
    t = recipe.train
    kind = "full finetune" if recipe.lora is None else ("QLoRA" if recipe.model.load_in_4bit else "LoRA") + f" r={recipe.lora.r}"
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.num_train_epochs:g} epochs"
    console.print(f"[bold]ftcli train[/] {recipe.model.name} · {t.stage} · {kind} · {steps} · "
                  f"batch {t.per_device_train_batch_size}×{t.gradient_accumulation_steps} · lr {t.learning_rate:g}")


def print_result(result) -> None:
    from ftcli.runner import signals

    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("run directory", str(result.run_dir))
    if result.adapter_dir:
        table.add_row("adapter", str(result.adapter_dir))
    if result.model_dir:
        table.add_row("model", str(result.model_dir))
    if result.merged_dir:
        table.add_row("merged", str(result.merged_dir))
    if result.export_dir:
        table.add_row("export", f"{result.export_dir} (GGUF, Modelfile, export-report.json)")
    table.add_row("metrics", f"{result.run_dir / 'metrics.jsonl'}, {result.run_dir / 'loss.png'}")
    for label, text in signals.summary(result.stage, result.metrics):
        table.add_row(label, text)
    end = next((m for m in reversed(result.metrics) if "mean_tokens_per_second" in m), None)
    if end:
        steady = f", {end['steady_tokens_per_second']:,.0f} after the first steps" if "steady_tokens_per_second" in end else ""
        table.add_row("throughput", f"{end['mean_tokens_per_second']:,.0f} real tokens/s{steady}")
    report = result.data_report
    if report.get("rows_skipped"):
        example = f" (e.g. {report['skipped_examples'][0]})" if report.get("skipped_examples") else ""
        table.add_row("skipped rows", f"{report['rows_skipped']}{example}")
    if report.get("rows_without_targets"):
        table.add_row("dropped rows", f"{report['rows_without_targets']} with no trained token left after templating "
                                      "and truncation")
    table.add_row("time", f"{result.seconds:.0f} s")
    console.print("[bold green]done[/]")
    console.print(table)
    for warning in signals.warnings(result.stage, result.metrics):
        console.print(f"[yellow]warning[/] {escape(warning)}", highlight=False)
    if result.sample_reply is not None:
        console.print("[bold]sample[/] (greedy, from the finetuned model)")
        console.print(f"  user      : {result.sample_prompt}", markup=False)
        console.print(f"  assistant : {result.sample_reply}", markup=False)
    if result.gguf_reply is not None:
        console.print(f"[bold]the same from the GGUF[/] (llama.cpp, {result.gguf_path.name})")
        console.print(f"  assistant : {result.gguf_reply}", markup=False)
        console.print(f"chat with it: ftcli chat {result.gguf_path}", markup=False)


def _progress_info(stage: str, logs: dict) -> str:
    """The stage's key figures (loss; reward for GRPO; accuracy and margin for DPO) and real tokens per second."""
    from ftcli.runner import signals

    parts = signals.live(stage, logs)
    if logs.get("tokens_per_second"):
        parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
    return " · ".join(parts)


class _progress:
    """A rich progress bar fed by Trainer callbacks (rank 0 only): steps, elapsed time, it/s (measured here, on
    every run), the time left, and the stage's key figures from the last log."""

    def __init__(self, stage: str = "sft"):
        self.stage = stage

    def __enter__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from transformers import TrainerCallback

        bar = Progress(TextColumn("training"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[rate]}"), TextColumn("eta"), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), console=console, transient=False)
        state = {"task": None, "start": None}
        stage = self.stage

        class Callback(TrainerCallback):
            def on_train_begin(self, args, s, control, **kw):
                if s.is_world_process_zero:
                    if state["task"] is not None:  # the next stage of a pipeline: its finished bar stays printed
                        bar.remove_task(state["task"])
                    bar.start()
                    state["task"] = bar.add_task("train", total=s.max_steps, info="", rate="")
                    state["start"] = (time.perf_counter(), s.global_step)  # a resumed run counts from here

            def on_step_end(self, args, s, control, **kw):
                if state["task"] is not None:
                    seconds, steps = time.perf_counter() - state["start"][0], s.global_step - state["start"][1]
                    rate = steps / seconds if seconds > 0 else 0.0
                    bar.update(state["task"], completed=s.global_step,
                               rate=f"{rate:.2f} it/s" if rate >= 0.1 else f"{1 / rate:.1f} s/it" if rate else "")

            def on_log(self, args, s, control, logs=None, **kw):
                if state["task"] is not None and logs and "train_runtime" not in logs:
                    info = _progress_info(stage, logs)
                    if info:
                        bar.update(state["task"], info=info)

            def on_train_end(self, args, s, control, **kw):
                bar.stop()

        self.bar = bar
        return Callback()

    def __exit__(self, *exc):
        self.bar.stop()
        return False
