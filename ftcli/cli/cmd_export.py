"""`ftcli export` and `ftcli chat` (docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ftcli.cli.app import app, console, errors, fail
from ftcli.errors import FtcliError


_QUANTS = "f16, bf16, f32, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m, q2_k, dynamic-q4, dynamic-q3, dynamic-q2"


@app.command("export")
def export_cmd(
    target: Annotated[Optional[Path], typer.Argument(help="A run directory (or a Hugging Face model folder); "
                      "default: latest, the newest finished run under runs/.", show_default=False)] = None,
    safetensors: Annotated[bool, typer.Option("--safetensors", help="Write the merged model as safetensors (merged/).")] = False,
    gguf: Annotated[Optional[str], typer.Option("--gguf", metavar="QUANTS",
                    help=f"GGUF quant types, comma-separated, e.g. q4_k_m,q8_0. Supported: {_QUANTS}.")] = None,
    ollama: Annotated[bool, typer.Option("--ollama", help="Write an Ollama Modelfile (implies --gguf q8_0 when no --gguf).")] = False,
    adapter: Annotated[bool, typer.Option("--adapter", help="Copy the PEFT adapter (adapter/).")] = False,
    adapter_gguf: Annotated[bool, typer.Option("--adapter-gguf", help="Write the adapter as a LoRA GGUF "
                                               "(adapter-lora.gguf) that llama.cpp applies to the base model's GGUF.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN_DIR/export).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files of the same name in the output folder "
                                            "(exports are additive: every other file is kept).")] = False,
    verify_only: Annotated[bool, typer.Option("--verify-only", help="Re-check the GGUF files of an existing export.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the logits/tokenisation parity checks.")] = False,
    imatrix: Annotated[Optional[str], typer.Option("--imatrix", metavar="auto|FILE.jsonl",
                       help="Calibrate the quants with an importance matrix: auto = the run's eval (else training) "
                            "rows; or a .jsonl of text. Saved as imatrix.gguf (llama.cpp's format).")] = None,
    calibration_tokens: Annotated[int, typer.Option("--calibration-tokens", min=256,
                                  help="Token budget of the calibration rows (imatrix, sensitivity).")] = 32768,
    system: Annotated[Optional[str], typer.Option("--system", help="SYSTEM prompt for the Modelfile (default: the recipe's dataset.system_prompt).")] = None,
) -> None:
    """Export a run: merged safetensors, GGUF (f16 … q4_k_m) and an Ollama Modelfile, each verified.

    With no format option: GGUF (the recipe's export.gguf_quant, else q8_0) and a Modelfile.
    """
    from ftcli.cli.cmd_runs import pick_run
    from ftcli.export import quantize as quant
    from ftcli.export.run import ExportOptions, export

    try:
        target = pick_run(target, "export")
        opts = ExportOptions(safetensors=safetensors, gguf=quant.parse_quants(gguf) if gguf else [], ollama=ollama,
                             adapter=adapter, adapter_gguf=adapter_gguf, out_dir=out, overwrite=overwrite,
                             verify=not no_verify,
                             verify_only=verify_only, system=system, imatrix=imatrix,
                             calibration_tokens=calibration_tokens)
        report = export(target, opts, log=lambda msg: console.print(f"[dim]·[/] {msg}", highlight=False))
    except FtcliError as err:
        fail(err)
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        raise typer.Exit(130)
    _print_export(report)


def _print_export(report: dict) -> None:
    from ftcli.export.run import report_summary

    wrote = {name.rstrip("/") for name in (report.get("history") or [{}])[-1].get("wrote", [])}
    if "verified" in report or "history" not in report:  # --verify-only (or an older report): every file
        wrote = {entry["file"].rstrip("/") for entry in report.get("files", [])}
    table = Table(box=None, padding=(0, 1))
    for column in ("file", "size", "NMSE", "top-1", "KL", "verdict", "fallbacks"):
        table.add_column(column, no_wrap=True)
    removed, fallbacks, kept = False, False, []
    for row in report_summary(report):
        if row["bytes"] is None:
            continue
        if row["kept"] and row["file"].rstrip("/") not in wrote:
            kept.append(row["file"])
            continue
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        removed |= not row["kept"]
        fallbacks |= bool(row["fallbacks"])
        table.add_row(row["file"] + ("*" if not row["kept"] else ""), f"{row['bytes'] / 2**20:.1f}M",
                      fmt(row["nmse"], ".2g"), fmt(row["top1"], ".0%"), fmt(row["kl"], ".2g"),
                      row["verdict"] or "", str(row["fallbacks"] or ""))
    console.print("[bold green]export done[/]" if "verified" not in report else "[bold green]verified[/]",
                  f"→ {report.get('out_dir')}")
    console.print(table)
    if removed:
        console.print("[dim]* intermediate 16-bit file: every quant was made from it, then removed[/]")
    if fallbacks:
        console.print("[dim]fallbacks: tensors whose rows do not divide into the quant's blocks (256 values for "
                      "k-quants) were stored in the next wider type; export-report.json lists them[/]")
    console.print("[dim]verdict against the trained model: fine (top-1 ≥ 90%, KL ≤ 0.05), degraded (top-1 ≥ 60%, "
                  "KL ≤ 0.5), else broken (docs/export.md)[/]")
    if kept:
        console.print(f"kept from earlier exports: {', '.join(kept)}", markup=False)
    _print_quality(report)
    tok = report.get("tokenization")
    if tok:
        bad = [s for s in tok["samples"] if not s["match"]]
        console.print(f"tokenisation parity (llama.cpp vs HF): {len(tok['samples']) - len(bad)}/{len(tok['samples'])} "
                      "samples identical" + (", chat template identical" if tok["chat_match"] else ""))
        for sample in bad:
            console.print(f"  [yellow]differs[/] ({sample['kind']}) {sample['text'][:60]!r}: "
                          f"{sample.get('first_difference')}", markup=True, highlight=False)
    for entry in report.get("files", []):
        for note in entry.get("notes") or []:
            console.print(f"[yellow]note[/] {entry['file']}: {note}", highlight=False)
    for note in (report.get("gguf") or {}).get("notes", []):
        console.print(f"[yellow]note[/] {note}", highlight=False)
    if any(e.get("file") == "Modelfile" for e in report.get("files", [])):
        console.print(f"ollama: cd {report.get('out_dir')} && ollama create my-model -f Modelfile")


def _print_quality(report: dict) -> None:
    from ftcli.export.quality import table_rows

    figures = {e["quant"]: e["quality"] for e in report.get("files", []) if e.get("quality")}
    if not figures:
        return
    rows = table_rows(figures)
    table = Table(box=None, padding=(0, 1), title="quality vs the 16-bit file on held-out rows", title_justify="left")
    for column in rows[0]:
        table.add_column(column, no_wrap=True)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    cal = report.get("calibration") or {}
    console.print(f"[dim]held-out: {cal.get('heldout_tokens')} tokens of {cal.get('source')}"
                  + (f"; imatrix on {cal.get('calibration_tokens')} other tokens" if cal.get("imatrix") else "")
                  + f"; plot: {report.get('quality_plot')}[/]", highlight=False)


@app.command("chat")
def chat_cmd(
    target: Annotated[Optional[Path], typer.Argument(help="A run directory, a model folder or a .gguf file; default: "
                      "latest, the newest finished run under runs/.", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this one message and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message for the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
) -> None:
    """Chat with a trained model in the terminal, with its training chat template and stop tokens."""
    from ftcli.cli.cmd_runs import pick_run
    from ftcli.export.chat_session import ChatSession

    try:
        target = pick_run(target, "chat")
        session = ChatSession(target, max_new_tokens=max_new_tokens, temperature=temperature)
    except FtcliError as err:
        fail(err)
    messages = [{"role": "system", "content": system}] if system else []
    try:
        if prompt is not None:
            _stream(session, messages + [{"role": "user", "content": prompt}])
            return
        console.print(f"[dim]{session.description} · empty line or Ctrl-D to quit[/]")
        while True:
            try:
                text = console.input("[bold]you[/] › ")
            except EOFError:
                break
            if not text.strip():
                break
            messages.append({"role": "user", "content": text})
            console.print("[bold]model[/] › ", end="")
            messages.append({"role": "assistant", "content": _stream(session, messages)})
    except FtcliError as err:
        fail(err)
    except KeyboardInterrupt:
        errors.print("\ninterrupted", style="yellow")
        raise typer.Exit(130)
    finally:
        session.close()


def _stream(session, messages: list[dict]) -> str:
    pieces = []
    for piece in session.reply(messages):
        pieces.append(piece)
        console.print(piece, end="", markup=False, highlight=False)
    console.print()
    return "".join(pieces)
