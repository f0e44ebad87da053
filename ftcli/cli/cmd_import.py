"""`ftcli import`: an Axolotl, LLaMA-Factory or TRL CLI config in, an ftcli recipe and its mapping table out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftcli.cli.app import app, console, fail
from ftcli.errors import BadInput, FtcliError

STYLE = {"mapped": "green", "ignored": "dim", "unsupported": "yellow"}


@app.command(name="import")
def import_config(
    config: Annotated[Path, typer.Argument(help="An Axolotl, LLaMA-Factory or TRL CLI (trl sft --config) YAML.",
                                           show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the recipe here (default: print "
                                                   "it).")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="TRL configs only: the `trl` command it was for "
                                                 "(sft, dpo, grpo). Default sft.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing -o file.")] = False,
) -> None:
    """Convert another tool's training config into an ftcli recipe; print what each source key became."""
    from ftcli.recipe import importers

    try:
        if output is not None and output.exists() and not overwrite:
            raise BadInput(f"{output} already exists", hint="pass --overwrite to replace it, or choose another -o")
        imported = importers.import_config(config, stage=stage)
    except FtcliError as err:
        fail(err)
    table = Table(title=f"{config} ({imported.tool}) → ftcli recipe", title_justify="left")
    for column in ("source key", "status", "ftcli / why / what to do"):
        table.add_column(column, overflow="fold")
    for row in imported.rows:
        table.add_row(row.key, f"[{STYLE[row.status]}]{row.status}[/]", row.detail)
    console.print(table)
    counts = ", ".join(f"{imported.count(s)} {s}" for s in importers.STATUSES)
    console.print(f"{counts}; the recipe validates", markup=False)
    if output is None:
        console.print(imported.yaml, markup=False)
        return
    output.write_text(imported.yaml, encoding="utf-8")
    console.print(f"[green]wrote[/] {output}: check it with `ftcli validate {output}`")
