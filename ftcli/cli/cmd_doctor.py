"""`ftcli doctor` (docs/doctor.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftcli.cli.app import SetOpt, app, console, errors, fail
from ftcli.errors import FtcliError


@app.command("doctor")
def doctor_cmd(
    target: Annotated[str, typer.Argument(help="A recipe (.yaml), a model folder, builtin:<name> or Hugging Face id, "
                                                "a run directory, or a .gguf file.", show_default=False)],
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


def _print_doctor(report, fix_dir) -> None:
    from rich.text import Text

    styles = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    console.print(f"[bold]ftcli doctor[/] {report.target}", highlight=False)
    for severity, findings in report.grouped():
        table = Table(title=f"{severity}s ({len(findings)})", title_style=styles[severity], title_justify="left",
                      show_header=True, header_style="dim", box=None, padding=(0, 1), expand=False)
        table.add_column("check", style=styles[severity], no_wrap=True)
        table.add_column("finding", overflow="fold", ratio=3)
        table.add_column("fix", overflow="fold", ratio=2, style="dim")
        for f in findings:  # Text, not markup: messages quote template markers such as [/INST]
            table.add_row(Text(f.check), Text(f.message), Text(("(--fix) " if f.fixable else "") + f.fix))
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
