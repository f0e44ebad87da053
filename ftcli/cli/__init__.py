"""The `ftcli` command: parse, call, print. This package is the only code that prints for the user.

app.py holds the typer app, the consoles and error printing; one module per command group registers its
commands on the app (cmd_train, cmd_export, cmd_doctor, cmd_runs, cmd_bench); `main` is the console script.

May import every package; no package imports this one.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# Importing the command modules registers their commands on `app`, in this order in --help.
from ftcli.cli import cmd_train  # noqa: F401, I001
from ftcli.cli import cmd_export  # noqa: F401
from ftcli.cli import cmd_doctor  # noqa: F401
from ftcli.cli import cmd_runs  # noqa: F401
from ftcli.cli import cmd_bench  # noqa: F401
from ftcli.cli import cmd_import  # noqa: F401
from ftcli.cli.app import app, errors


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import about an optional CPU kernel package; it is noise for users.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Library deprecation notices (e.g. transformers renaming gradient_checkpointing) are not the user's to fix.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the run's own output
    hf_logging.set_verbosity_error()
    import typer

    from ftcli.cli.flags import normalise

    try:
        app(args=normalise(sys.argv[1:], typer.main.get_command(app)), prog_name="ftcli")
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        sys.exit(130)
    except Exception as err:  # a bug in ftcli or a library: keep the traceback, show one clear line
        log = Path(tempfile.gettempdir()) / f"ftcli-crash-{os.getpid()}.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        errors.print(f"error: unexpected {type(err).__name__}: {err}", markup=False, style="bold red")
        errors.print(f"the full traceback is in {log}; please include it in a bug report", markup=False)
        sys.exit(1)
