"""The typer app, the two consoles (stdout, stderr), shared argument types and `fail`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ftcli import __version__
from ftcli.errors import FtcliError, RecipeError

app = typer.Typer(
    name="ftcli",
    help="Finetune open LLMs from one YAML recipe: SFT, DPO or GRPO with LoRA, QLoRA or full weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags show as flags (rich mode prints `--dry-run <bool>`), 80 columns
)
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

RecipeArg = Annotated[Path, typer.Argument(metavar="RECIPE", help="Path of the YAML recipe, e.g. recipes/quickstart.yaml", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a recipe value, parsed as YAML: --set train.learning_rate=1e-4 "
                                     "--set 'export.formats=[]'. Repeatable."),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"ftcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Finetune open LLMs from one YAML recipe."""


def fail(err: FtcliError) -> None:
    """Print an FtcliError the way a user can act on, and exit with its code (never a traceback)."""
    if isinstance(err, RecipeError):
        errors.print("invalid recipe", style="bold red")
        for problem in err.problems:
            errors.print(f"  - {problem}", markup=False)
    else:
        errors.print(f"error: {err.message}", markup=False, style="bold red")
    if err.hint:
        errors.print(f"hint: {err.hint}", markup=False, style="yellow")
    raise typer.Exit(err.exit_code)
