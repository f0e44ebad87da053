"""The `ftcli` command: parse, call, print. This package is the only code that prints for the user.

One module per command group (cmd_train, cmd_export, cmd_doctor, cmd_bench); this file holds the
app, the consoles, error printing and `main`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
import warnings
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
)
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

RecipeArg = Annotated[Path, typer.Argument(help="Path of the YAML recipe, e.g. recipes/quickstart.yaml", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe value, parsed as YAML: --set train.learning_rate=1e-4 "
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


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import about an optional CPU kernel package; it is noise for users.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Library deprecation notices (e.g. transformers renaming gradient_checkpointing) are not the user's to fix.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the run's own output
    hf_logging.set_verbosity_error()
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        sys.exit(130)
    except Exception as err:  # a bug in ftcli or a library: keep the traceback, show one clear line
        log = Path(tempfile.gettempdir()) / f"ftcli-crash-{os.getpid()}.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        errors.print(f"error: unexpected {type(err).__name__}: {err}", markup=False, style="bold red")
        errors.print(f"the full traceback is in {log}; please include it in a bug report", markup=False)
        sys.exit(1)


# Importing the command modules registers their commands on `app`, in this order in --help.
from ftcli.cli import cmd_train  # noqa: E402,F401,I001
from ftcli.cli import cmd_export  # noqa: E402,F401,I001
from ftcli.cli import cmd_doctor  # noqa: E402,F401,I001
from ftcli.cli import cmd_bench  # noqa: E402,F401,I001
