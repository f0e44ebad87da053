"""`ftcli runs`: list the runs under runs/, show one, compare several (docs/commands.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftcli.cli.app import app, console, fail
from ftcli.errors import BadInput, FtcliError

runs_app = typer.Typer(help="List the runs under runs/ (newest first), show one, or compare several.",
                       invoke_without_command=True, no_args_is_help=False)
app.add_typer(runs_app, name="runs")

RootOpt = Annotated[Path, typer.Option("--root", help="The folder that holds the runs.")]


def _final(run) -> str:
    """The run's last key figure: reward for GRPO, else the last train loss."""
    from ftcli.runner import plots, signals

    key, label = plots.key_metric(run.stage)
    values = signals.series(run.metrics, key)
    return f"{label.split()[-1]} {values[-1]:.3g}" if values else ""


@runs_app.callback()
def runs_cmd(ctx: typer.Context, root: RootOpt = Path("runs")) -> None:
    """List the runs under --root: name, stage, status, steps, final loss or reward, exports, age."""
    if ctx.invoked_subcommand is not None:
        return
    from ftcli.runner import catalog

    runs = catalog.list_runs(root)
    if not runs:
        console.print(f"no runs under {root}/ (train one: ftcli train recipes/quickstart.yaml)", markup=False)
        return
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for column in ("run", "stage", "status, steps", "final", "exports", "age"):  # fits 80 columns
        table.add_column(column, no_wrap=column != "exports")
    for run in runs:
        steps = "" if run.steps is None else f" {run.steps}" + (f"/{run.max_steps}" if run.max_steps else "")
        table.add_row(run.name, run.stage, run.status[:24] + steps, _final(run), " ".join(run.exports) or "-",
                      catalog.age_of(run, short=True))
    console.print(table)
    console.print(f"[dim]{len(runs)} run(s) under {root}/; details: ftcli runs show RUN (or latest)[/]")


def pick_run(target: str | Path | None, command: str, root: Path = Path("runs")) -> Path:
    """TARGET as given, or for none / `latest` the newest finished run under `root`, saying which it picked."""
    from ftcli.runner import catalog

    path, note = catalog.resolve(target, root, command=command)
    if note:
        console.print(note, markup=False, highlight=False)
    return path


def _run_dir(run: str | None, root: Path, command: str) -> Path:
    from ftcli.runner import catalog

    path = pick_run(run, command, root)
    if not catalog.is_run(path):
        raise BadInput(f"{path} is not a run directory (no {catalog.MANIFEST})",
                       hint=f"list the runs: ftcli runs --root {root}")
    return path


@runs_app.command("show")
def show_cmd(run: Annotated[Optional[str], typer.Argument(help="A run directory, or latest (the default).",
                                                          show_default=False)] = None,
             root: RootOpt = Path("runs")) -> None:
    """A run's summary: model, stage, status, the stage's key metrics and what learning looked like, its files."""
    from ftcli.runner import catalog, signals

    try:
        info = catalog.read_run(_run_dir(run, root, "runs show"))
    except FtcliError as err:
        fail(err)
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("run", str(info.path))
    table.add_row("model", info.model)
    table.add_row("stage", info.stage)
    table.add_row("status", info.status)
    if info.steps is not None:
        table.add_row("steps", f"{info.steps}" + (f" of {info.max_steps}" if info.max_steps else ""))
    for label, text in signals.summary(info.stage, info.metrics):
        table.add_row(label, text)
    table.add_row("exports", " ".join(info.exports) or "none (ftcli export RUN_DIR)")
    table.add_row("age", catalog.age_of(info))
    console.print(table)
    for warning in signals.warnings(info.stage, info.metrics):
        console.print(f"[yellow]warning[/] {warning}", highlight=False)


@runs_app.command("compare")
def compare_cmd(runs: Annotated[list[str], typer.Argument(help="Two or more run directories (latest allowed).",
                                                           show_default=False)],
                out: Annotated[Optional[Path], typer.Option("--out", help="The plot to write (.png).")] = None,
                root: RootOpt = Path("runs")) -> None:
    """One plot of the runs' losses (mean reward for GRPO runs) per step, and their key figures side by side."""
    from ftcli.runner import catalog, plots

    try:
        if len(runs) < 2:
            raise BadInput("compare needs at least two runs", hint="ftcli runs compare RUN_A RUN_B")
        infos = [catalog.read_run(_run_dir(r, root, "runs compare")) for r in runs]
    except FtcliError as err:
        fail(err)
    path = out or Path(f"compare-{'-vs-'.join(i.name for i in infos)[:150]}.png")
    plots.plot_compare(infos, path)
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for column in ("run", "stage", "status", "steps", "final"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(info.name, info.stage, info.status, "" if info.steps is None else str(info.steps), _final(info))
    console.print(table)
    console.print(f"plot: {path}", markup=False)
