"""`ftcli train` and `ftcli validate` on a pipeline recipe (`stages:`): the plan, the run, the stage table."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ftcli.cli.app import console
from ftcli.errors import BadInput


def print_pipeline_plan(pipeline, resolved: bool = False) -> None:
    """One line per stage: what it trains, on what data, starting from which weights."""
    from ftcli.recipe import to_yaml

    console.print(f"[bold]pipeline[/] of {len(pipeline.stages)} stages → {pipeline.output_dir}")
    for stage in pipeline.stages:
        r = stage.recipe
        start = f"adapter {r.model.adapter}" if r.model.adapter else r.model.name
        steps = f"{r.train.max_steps} steps" if r.train.max_steps > 0 else f"{r.train.num_train_epochs:g} epochs"
        fresh = "new LoRA r=" + str(r.lora.r) if r.lora else ("continued adapter" if r.model.adapter else "full")
        console.print(f"  {stage.number}. {stage.name} ({r.train.stage}) · {r.dataset.path} · {steps} · "
                      f"{fresh} · from {start}", markup=False)
        if resolved:
            console.print(to_yaml(r), markup=False)
    formats = ", ".join(pipeline.export.formats) or "none"
    console.print(f"  export (after stage {len(pipeline.stages)}): {formats}", markup=False)


def train_pipeline(pipeline, recipe_path: Path, *, dry_run: bool, overwrite: bool, resume: bool, start: str | None,
                   nproc: int, progress, show_result, launch) -> int:
    """Run a pipeline (or dry-run its first stage) and print the stage table and the last stage's result.

    With `nproc` > 1 (and not yet inside torchrun) everything that would stop the run is checked here, then
    `launch(output_dir)` re-runs the command in that many processes; its exit code is returned.
    """
    from ftcli.engine import distributed
    from ftcli.recipe import Pipeline
    from ftcli.runner import pipeline as pipelines
    from ftcli.runner import train as training

    if not isinstance(pipeline, Pipeline):
        raise BadInput(f"--from: {recipe_path} is a single-stage recipe", hint="--from names a stage of a pipeline")
    if resume or start is not None:
        pipeline = pipelines.resume_dir(pipeline, recipe_path)
    if start is not None:
        pipeline.index_of(start)  # an unknown stage name stops here, before any process starts
    print_pipeline_plan(pipeline)
    if nproc > 1 and distributed.world_size() == 1 and not dry_run:
        for stage in pipeline.stages:
            training.check_supported(stage.recipe, world_size=nproc)
        pipelines.check_can_start(Path(pipeline.output_dir), overwrite=overwrite,
                                  resume=resume or start is not None)
        return launch(pipeline.output_dir)
    log = lambda msg: console.print(f"[dim]·[/] {escape(msg)}", highlight=False)  # noqa: E731
    if dry_run:  # later stages start from weights the earlier ones have not written yet
        result = training.run(pipeline.stages[0].recipe, dry_run=True, log=log)
        console.print(f"[green]dry run ok[/]: every stage is valid; stage 1 loads with {result.trainable_params:,} "
                      f"trainable of {result.total_params:,} parameters; nothing was trained or written")
        return 0
    with progress() as bar:
        result = pipelines.run(pipeline, overwrite=overwrite, resume=resume, start=start, log=log, callbacks=[bar])
    if not distributed.is_main():
        return 0
    print_stage_table(result)
    if result.last is not None and result.last.metrics:
        show_result(result.last)
    return 0


def print_stage_table(result) -> None:
    table = Table(title=f"pipeline {result.run_dir}", title_justify="left")
    for column in ("stage", "status", "time", "steps", "final metrics"):
        table.add_column(column)
    for record in result.stages:
        metrics = record.get("final_metrics", {})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "rewards/margins", "reward"))
        status = record["status"] + (" (skipped)" if record.get("skipped") else "")
        table.add_row(f"{record['number']}. {record['name']}", status, f"{record.get('seconds', 0):.0f} s",
                      str(metrics.get("steps", "")), shown)
    console.print(table)
    console.print(f"pipeline.json, loss.png: {result.run_dir}", markup=False)
