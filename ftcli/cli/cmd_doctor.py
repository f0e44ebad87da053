"""`ftcli doctor` (docs/doctor.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftcli.cli.app import SetOpt, app, console, errors, fail
from ftcli.errors import BadInput, FtcliError


@app.command("doctor")
def doctor_cmd(
    target: Annotated[Optional[str], typer.Argument(help="A recipe (.yaml), a model folder, builtin:<name> or Hugging "
                      "Face id, a run directory, or a .gguf file; default: the newest finished run under runs/, "
                      "else the one recipe in this folder.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print {target, findings: [{check, severity, message, "
                                                         "fixable}]} as JSON.")] = False,
    fix_dir: Annotated[Optional[Path], typer.Option("--fix", metavar="OUT_DIR",
                       help="Write corrected tokenizer/config files (and embeddings when needed) into OUT_DIR; "
                            "never in place.")] = None,
    numerics: Annotated[bool, typer.Option("--numerics", help="TARGET is a recipe: check gradient accumulation, "
                                                              "packed vs unpacked loss and patched kernels on a few samples.")] = False,
    set_: SetOpt = None,
) -> None:
    """Find tokenizer, chat-template, config and embedding bugs. Exit 0: no errors, 1: errors, 2: could not run."""
    import json as _json

    from ftcli import doctor

    try:
        target = default_target(target, quiet=json_out)
        if numerics:
            from ftcli.doctor import numerics as numeric_checks

            report = numeric_checks.run(target, set_ or [])
        else:
            report = doctor.diagnose(target, fix_dir=str(fix_dir) if fix_dir else None, overrides=set_ or [])
            if fix_dir is not None:
                after = doctor.diagnose(str(fix_dir))
                report.notes.append(f"re-checked {fix_dir}: {len(after.findings)} finding(s), "
                                    f"{len(after.errors)} error(s)")
    except FtcliError as err:
        if json_out:
            console.print(_json.dumps({"target": target, "error": err.message, "findings": []}), markup=False)
            raise typer.Exit(2)
        err.exit_code = 2  # the doctor could not run
        fail(err)
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        raise typer.Exit(130)
    code = (1 if after.errors else 0) if fix_dir is not None and not numerics else report.exit_code
    if json_out:
        console.print(_json.dumps(report.to_json(), ensure_ascii=False), markup=False, soft_wrap=True)
        raise typer.Exit(code)
    _print_doctor(report, fix_dir)
    raise typer.Exit(code)


def default_target(target: str | None, quiet: bool = False) -> str:
    """TARGET as given; else (or for `latest`) the newest finished run, else the one recipe in this folder."""
    from ftcli.runner import catalog

    if target is not None and target != catalog.LATEST:
        return target
    run = catalog.newest()
    if run is not None:
        picked, why = str(run.path), "the newest finished run under runs/"
    else:
        recipes = sorted(Path(".").glob("*.yaml")) + sorted(Path(".").glob("*.yml"))
        if len(recipes) != 1 or target == catalog.LATEST:
            found = f" ({len(recipes)} recipes here: name one)" if len(recipes) > 1 else ""
            raise BadInput(f"nothing to check: no finished run under runs/ and no single recipe in this folder{found}",
                           hint="name a target: ftcli doctor RECIPE.yaml | RUN_DIR | MODEL_FOLDER | builtin:tiny-llama3 "
                                "| model.gguf")
        picked, why = str(recipes[0]), "the recipe in this folder"
    if not quiet:
        console.print(f"doctor: checking {picked} ({why}; name another: ftcli doctor TARGET)", markup=False,
                      highlight=False)
    return picked


def _print_doctor(report, fix_dir) -> None:
    from rich.text import Text

    styles = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    console.print(f"[bold]ftcli doctor[/] {report.target}", highlight=False)
    for severity, findings in report.grouped():
        table = Table(title=f"{severity}s ({len(findings)})", title_style=styles[severity], title_justify="left",
                      show_header=False, box=None, padding=(0, 1), expand=False)
        table.add_column("check", style=styles[severity], no_wrap=True)
        table.add_column("finding", overflow="fold")  # one wide column: a finding stays a few lines at 80 columns
        for f in findings:  # Text, not markup: messages quote template markers such as [/INST]
            text = Text(f.message)
            if f.fix:
                text.append("\nfix: " + ("(--fix) " if f.fixable else "") + f.fix, style="dim")
            table.add_row(Text(f.check), text)
        console.print(table)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"), highlight=False)
    if fix_dir is not None:
        console.print(Text(f"--fix wrote {len(report.written)} file(s) to {fix_dir}; fixed: "
                           f"{', '.join(report.fixed) or 'nothing'}", style="green"), highlight=False)
    counts = {s: len(f) for s, f in report.grouped()}
    if not report.findings:
        console.print("[bold green]no findings[/]")
    else:
        console.print(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items()), highlight=False)
