"""`ftcli train` on a pipeline recipe: every stage in turn in one run directory.

    RUN_DIR/pipeline.json          status, timing, final metrics and input hash of each stage
    RUN_DIR/loss.png               every stage's loss on one axis
    RUN_DIR/stages/01-sft/         a complete run directory of its own (adapter/, metrics.jsonl, loss.png, ...)
    RUN_DIR/stages/02-dpo/         ... the last stage also holds the export (merged/, export/)

Each stage is one call of runner.train.run on the stage's recipe, whose model section the recipe package has
already pointed at the previous stage's adapter or merged weights. The template and the doctor's fixes travel
with them: every stage resolves the same template and the doctor re-applies the same fixes on load.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftcli.engine import distributed
from ftcli.errors import BadInput, FtcliError
from ftcli.recipe import Pipeline
from ftcli.runner import pipeline_state, rundir
from ftcli.runner import train as training
from ftcli.runner.outputs import RunResult


@dataclass
class PipelineResult:
    run_dir: Path
    stages: list[dict] = field(default_factory=list)  # pipeline.json's stage records
    last: RunResult | None = None  # the last stage's result: its adapter, export, sample reply
    loss_plot: Path | None = None
    seconds: float = 0.0


def run(pipeline: Pipeline, *, overwrite: bool = False, resume: bool = False, start: str | None = None,
        log: Callable[[str], None] = lambda _: None, callbacks: list | None = None) -> PipelineResult:
    """Run the stages that need it (all; or, with `resume` / `start`, what pipeline_state.plan_actions says).

    With several processes (torchrun), every rank trains every stage; rank 0 alone writes pipeline.json and
    the outputs, and the others follow its plan and wait at each stage boundary for the weights it saves.
    """
    for stage in pipeline.stages:  # unknown quant type, missing package: exit 2 before any stage trains
        training.check_supported(stage.recipe)
    started = time.time()
    run_dir = Path(pipeline.output_dir)
    hashes = pipeline_state.input_hashes(pipeline)
    resuming = resume or start is not None
    recorded = open_pipeline_dir(run_dir, overwrite=overwrite, resume=resuming) if distributed.is_main() else None
    recorded = distributed.from_main(recorded)  # also: the other ranks wait until rank 0 has prepared run_dir
    first = pipeline.index_of(start) if start is not None else None
    actions = pipeline_state.plan_actions(pipeline, hashes, recorded, resume=resume, start=first)
    state = pipeline_state.new_state(pipeline, hashes)
    kept = {s["number"]: s for s in (recorded or {}).get("stages", [])}
    result = PipelineResult(run_dir=run_dir, stages=state["stages"])
    for stage, action, record in zip(pipeline.stages, actions, state["stages"]):
        if action == "skip":
            record.update({k: v for k, v in kept[stage.number].items() if k != "status"}, status="done", skipped=True)
            log(f"stage {stage.number} {stage.name}: finished earlier with the same inputs, skipped")
            continue
        result.last = run_stage(pipeline, stage, action, record, state, run_dir, log, callbacks)
        distributed.barrier()  # the next stage loads the adapter or merged weights rank 0 has just saved
    if result.last is None:  # every stage was skipped: the last one's outputs are still there
        result.last = RunResult(run_dir=Path(pipeline.stages[-1].recipe.output_dir))
    state["status"] = "done"
    if "export" not in state and recorded and recorded.get("export") and actions[-1] == "skip":
        state["export"] = recorded["export"]
    if distributed.is_main():
        result.loss_plot = pipeline_state.plot_pipeline(
            [(s.name, rundir.read_metrics(Path(s.recipe.output_dir) / "metrics.jsonl")) for s in pipeline.stages],
            run_dir / "loss.png")
    pipeline_state.write_state(run_dir, state)
    result.seconds = time.time() - started
    return result


def check_can_start(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """What stops a pipeline from starting in `run_dir`, checked without writing (also before several
    processes start)."""
    if resume and pipeline_state.read_state(run_dir) is None:
        raise BadInput(f"--resume/--from: no pipeline.json in {run_dir}",
                       hint="start the pipeline without --resume (or set output_dir to its run directory)")
    if not resume and not overwrite and run_dir.exists() and any(run_dir.iterdir()):
        raise BadInput(f"output_dir {run_dir} already holds a run: pass --resume to continue it (finished stages "
                       "are skipped), --from STAGE to re-run from a stage, or --overwrite to replace it")


def open_pipeline_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> dict | None:
    """The run directory, new or replaced; or, to resume, what its pipeline.json recorded."""
    check_can_start(run_dir, overwrite=overwrite, resume=resume)
    if resume:
        return pipeline_state.read_state(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return None


def run_stage(pipeline: Pipeline, stage, action: str, record: dict, state: dict, run_dir: Path, log,
              callbacks) -> RunResult:
    """One stage: `run` from scratch (its folder replaced) or `resume` from its newest complete checkpoint."""
    total = len(pipeline.stages)
    verb = "resuming" if action == "resume" else "training"
    log(f"stage {stage.number}/{total} {stage.name} ({stage.recipe.train.stage}): {verb} from "
        f"{stage.recipe.model.adapter or stage.recipe.model.name}")
    record.update(status="running", started=pipeline_state.now())
    pipeline_state.write_state(run_dir, state)
    began = time.time()
    try:
        result = training.run(stage.recipe, overwrite=action == "run", resume=action == "resume", log=log,
                              callbacks=callbacks)
    except FtcliError as err:
        record["status"] = f"failed: {err.message.splitlines()[0]}"
        state["status"] = f"failed in stage {stage.number} ({stage.name})"
        pipeline_state.write_state(run_dir, state)
        raise
    record.update(status="done", finished=pipeline_state.now(), seconds=round(time.time() - began, 1),
                  resumed=action == "resume", final_metrics=pipeline_state.final_metrics(result.metrics))
    if result.export_dir or result.merged_dir:
        state["export"] = {"merged": str(result.merged_dir) if result.merged_dir else None,
                           "export": str(result.export_dir) if result.export_dir else None}
    pipeline_state.write_state(run_dir, state)
    return result


def resume_dir(pipeline: Pipeline, recipe_path: Path) -> Pipeline:
    """`--resume` with a timestamped output_dir means the newest earlier run of this pipeline."""
    return pipeline.with_output_dir(rundir.resume_target(pipeline.output_dir, recipe_path))
