"""The `ftcli` command: parse, call, print. The only module that prints for the user."""

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
from rich.markup import escape
from rich.table import Table

from ftcli import __version__
from ftcli.errors import BadInput, FtcliError, RecipeError

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


def _load(recipe_path: Path, overrides: list[str] | None):
    from ftcli import recipe

    return recipe.load(recipe_path, overrides or [])


@app.command()
def validate(recipe_path: RecipeArg, set_: SetOpt = None) -> None:
    """Check a recipe and print it resolved: defaults filled, overrides applied, canonical names."""
    from ftcli.recipe import to_yaml

    try:
        recipe = _load(recipe_path, set_)
    except FtcliError as err:
        fail(err)
    console.print(f"[green]valid[/] {recipe_path}")
    console.print(to_yaml(recipe), markup=False)
    _print_memory(recipe)


def _print_memory(recipe) -> None:
    """The pre-flight estimate of peak GPU memory, one line per part."""
    from ftcli import memory

    estimate = memory.estimate_for(recipe)
    if estimate is None:
        console.print("memory estimate: unavailable (the model config could not be read offline)", markup=False)
        return
    parts = ", ".join(f"{name} {value / memory.GiB:.1f}" for name, value in estimate.rows()[:-1])
    console.print(f"estimated peak GPU memory: {estimate.total / memory.GiB:.1f} GiB ({parts})", markup=False)


@app.command()
def train(
    recipe_path: RecipeArg,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Load the model and data, print the plan, train nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in output_dir.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in output_dir.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes on this machine, one per GPU (CPU: gloo).")] = 1,
) -> None:
    """Finetune a model as the recipe says and write the run directory."""
    from ftcli import distributed
    from ftcli import train as training

    if not distributed.is_main():
        console.quiet = True  # only rank 0 reports progress; every rank still reports its errors
    try:
        recipe = _load(recipe_path, set_)
        if resume:
            recipe = training.resolve_resume(recipe, recipe_path)
        if nproc > 1 and distributed.world_size() == 1:
            training.check_supported(recipe, world_size=nproc)  # exit 2 here, before starting processes
            raise typer.Exit(_launch(recipe_path, set_ or [], recipe.output_dir, nproc,
                                     dry_run=dry_run, overwrite=overwrite, resume=resume))
        _print_plan(recipe)
        with _progress() as progress:
            result = training.run(recipe, overwrite=overwrite, dry_run=dry_run, resume=resume,
                                  log=lambda msg: console.print(f"[dim]·[/] {escape(msg)}", highlight=False),
                                  callbacks=[progress])
    except FtcliError as err:
        if distributed.world_size() > 1:
            err.message = f"[rank {distributed.rank()}] {err.message}"
        fail(err)
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        raise typer.Exit(130)
    if dry_run:
        console.print(f"[green]dry run ok[/]: {result.trainable_params:,} trainable of "
                      f"{result.total_params:,} parameters; nothing was trained or written")
        return
    _print_result(result)


def _launch(recipe_path: Path, overrides: list[str], output_dir: str, nproc: int, **flags) -> int:
    """Re-run this command in `nproc` processes, all writing to the one output_dir resolved here."""
    import json as _json

    from ftcli import distributed

    argv = ["train", str(recipe_path)]
    for item in [*overrides, f"output_dir={_json.dumps(output_dir)}"]:
        argv += ["--set", item]
    argv += [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]
    console.print(f"launching {nproc} processes (torchrun)", markup=False)
    return distributed.launch(nproc, argv, echo=lambda msg: errors.print(msg, markup=False))


def _print_plan(recipe) -> None:
    t = recipe.train
    kind = "full finetune" if recipe.lora is None else ("QLoRA" if recipe.model.load_in_4bit else "LoRA") + f" r={recipe.lora.r}"
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.num_train_epochs:g} epochs"
    console.print(f"[bold]ftcli train[/] {recipe.model.name} · {t.stage} · {kind} · {steps} · "
                  f"batch {t.per_device_train_batch_size}×{t.gradient_accumulation_steps} · lr {t.learning_rate:g}")


def _print_result(result) -> None:
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    evals = [m["eval_loss"] for m in result.metrics if "eval_loss" in m]
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_row("run directory", str(result.run_dir))
    if result.adapter_dir:
        table.add_row("adapter", str(result.adapter_dir))
    if result.model_dir:
        table.add_row("model", str(result.model_dir))
    if result.merged_dir:
        table.add_row("merged", str(result.merged_dir))
    if result.export_dir:
        table.add_row("export", f"{result.export_dir} (GGUF, Modelfile, export-report.json)")
    table.add_row("metrics", f"{result.run_dir / 'metrics.jsonl'}, {result.run_dir / 'loss.png'}")
    if losses:
        table.add_row("train loss", f"{losses[0]:.4f} → {losses[-1]:.4f}")
    if evals:
        table.add_row("eval loss", f"{evals[-1]:.4f}")
    report = result.data_report
    if report.get("rows_skipped"):
        table.add_row("skipped rows", f"{report['rows_skipped']} (e.g. {report['skipped_examples'][0]})")
    table.add_row("time", f"{result.seconds:.0f} s")
    console.print("[bold green]done[/]")
    console.print(table)
    if result.sample_reply is not None:
        console.print("[bold]sample[/] (greedy, from the finetuned model)")
        console.print(f"  user      : {result.sample_prompt}", markup=False)
        console.print(f"  assistant : {result.sample_reply}", markup=False)
    if result.gguf_reply is not None:
        console.print(f"[bold]the same from the GGUF[/] (llama.cpp, {result.gguf_path.name})")
        console.print(f"  assistant : {result.gguf_reply}", markup=False)
        console.print(f"chat with it: ftcli chat {result.gguf_path}", markup=False)


class _progress:
    """A rich progress bar fed by Trainer callbacks (rank 0 only)."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from transformers import TrainerCallback

        bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), console=console, transient=False)
        state = {"task": None}

        class Callback(TrainerCallback):
            def on_train_begin(self, args, s, control, **kw):
                if s.is_world_process_zero:
                    bar.start()
                    state["task"] = bar.add_task("train", total=s.max_steps, info="")

            def on_step_end(self, args, s, control, **kw):
                if state["task"] is not None:
                    bar.update(state["task"], completed=s.global_step)

            def on_log(self, args, s, control, logs=None, **kw):
                if state["task"] is not None and logs and "loss" in logs:
                    bar.update(state["task"], info=f"loss {logs['loss']:.4f}")

            def on_train_end(self, args, s, control, **kw):
                bar.stop()

        self.bar = bar
        return Callback()

    def __exit__(self, *exc):
        self.bar.stop()
        return False


# ----------------------------------------------------------------------------- export and chat (issue 6)
_QUANTS = "f16, bf16, f32, q8_0, q6_k, q5_k_m, q4_k_m, q4_0"


@app.command("export")
def export_cmd(
    target: Annotated[Path, typer.Argument(help="A run directory (or a Hugging Face model folder).", show_default=False)],
    safetensors: Annotated[bool, typer.Option("--safetensors", help="Write the merged model as safetensors (merged/).")] = False,
    gguf: Annotated[Optional[str], typer.Option("--gguf", metavar="QUANTS",
                    help=f"GGUF quant types, comma-separated, e.g. q4_k_m,q8_0. Supported: {_QUANTS}.")] = None,
    ollama: Annotated[bool, typer.Option("--ollama", help="Write an Ollama Modelfile (implies --gguf q8_0 when no --gguf).")] = False,
    adapter: Annotated[bool, typer.Option("--adapter", help="Copy the PEFT adapter (adapter/).")] = False,
    adapter_gguf: Annotated[bool, typer.Option("--adapter-gguf", help="Write the adapter as a LoRA GGUF "
                                               "(adapter-lora.gguf) that llama.cpp applies to the base model's GGUF.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN_DIR/export).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export in the output folder.")] = False,
    verify_only: Annotated[bool, typer.Option("--verify-only", help="Re-check the GGUF files of an existing export.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the logits/tokenisation parity checks.")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="SYSTEM prompt for the Modelfile (default: the recipe's dataset.system_prompt).")] = None,
) -> None:
    """Export a run: merged safetensors, GGUF (f16 … q4_k_m) and an Ollama Modelfile, each verified.

    With no format option: GGUF (the recipe's export.gguf_quant, else q8_0) and a Modelfile.
    """
    from ftcli.export import quantize as quant
    from ftcli.export.run import ExportOptions, export

    try:
        opts = ExportOptions(safetensors=safetensors, gguf=quant.parse_quants(gguf) if gguf else [], ollama=ollama,
                             adapter=adapter, adapter_gguf=adapter_gguf, out_dir=out, overwrite=overwrite,
                             verify=not no_verify,
                             verify_only=verify_only, system=system)
        report = export(target, opts, log=lambda msg: console.print(f"[dim]·[/] {msg}", highlight=False))
    except FtcliError as err:
        fail(err)
    except KeyboardInterrupt:
        errors.print("interrupted", style="yellow")
        raise typer.Exit(130)
    _print_export(report)


def _print_export(report: dict) -> None:
    from ftcli.export.run import report_summary

    table = Table(box=None, padding=(0, 1))
    for column in ("file", "size", "max|Δ|", "NMSE", "top-1", "KL", "fallback"):
        table.add_column(column, no_wrap=True)
    removed = False
    for row in report_summary(report):
        if row["bytes"] is None:
            continue
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        removed |= not row["kept"]
        table.add_row(row["file"] + ("*" if not row["kept"] else ""), f"{row['bytes'] / 2**20:.1f}M",
                      fmt(row["max_abs_diff"], ".3g"), fmt(row["nmse"], ".2g"), fmt(row["top1"], ".0%"),
                      fmt(row["kl"], ".2g"), str(row["fallbacks"] or ""))
    console.print("[bold green]export done[/]" if "verified" not in report else "[bold green]verified[/]",
                  f"→ {report.get('out_dir')}")
    console.print(table)
    if removed:
        console.print("[dim]* intermediate 16-bit file: every quant was made from it, then removed[/]")
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


@app.command("chat")
def chat_cmd(
    target: Annotated[Path, typer.Argument(help="A run directory, a model folder or a .gguf file.", show_default=False)],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this one message and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message for the conversation.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
) -> None:
    """Chat with a trained model in the terminal, with its training chat template and stop tokens."""
    from ftcli.chat_cmd import ChatSession

    try:
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
# ----------------------------------------------------------------------------- end of export and chat


# ----------------------------------------------------------------------------- doctor (issue 7)
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
# ----------------------------------------------------------------------------- end of doctor


# --------------------------------------------------------------------------- ftcli bench


@app.command("bench")
def bench_cmd(
    arch: Annotated[str, typer.Option(help="Comma-separated shapes: llama3-8b, qwen3-8b, gemma3-4b, llama3.2-1b.")] = "llama3-8b",
    mode: Annotated[str, typer.Option(help="Comma-separated modes: hf, liger, unsloth, ftcli (peers run where installed).")] = "hf,liger,unsloth,ftcli",
    seq: Annotated[int, typer.Option(help="Sequence length.")] = 2048,
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 4,
    steps: Annotated[int, typer.Option(help="Steps per mode; the median of steps 3..N is reported.")] = 8,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank on all 7 projections.")] = 16,
    no_gc: Annotated[bool, typer.Option("--no-gradient-checkpointing", help="Train without activation checkpointing.")] = False,
    max_seq_: Annotated[bool, typer.Option("--max-seq", help="Find the longest batch-1 sequence each mode trains (doubling from 16k).")] = False,
    out: Annotated[Path, typer.Option(help="JSON file, rewritten as each mode finishes.")] = Path("bench.json"),
    cache: Annotated[Path, typer.Option(help="Where the random-init checkpoints are written.")] = Path("/tmp/ftcli-bench"),
    keep: Annotated[bool, typer.Option(help="Keep each checkpoint after its shape is done.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per mode.")] = 900.0,
) -> None:
    """Measure LoRA training speed and memory side by side: plain HF, Liger, Unsloth and ftcli in one run."""
    import json as _json
    import shutil as _shutil
    from dataclasses import asdict

    import torch

    from ftcli import bench

    if not torch.cuda.is_available():
        fail(BadInput("ftcli bench needs a CUDA GPU", hint="run it on a GPU machine"))
    archs = [a.strip() for a in arch.split(",") if a.strip()]
    unknown = [a for a in archs if a not in bench.SHAPES]
    bad_modes = [m for m in mode.split(",") if m not in bench.MODES]
    if unknown or bad_modes:
        fail(BadInput(f"unknown {'shape' if unknown else 'mode'}: {', '.join(unknown or bad_modes)}",
                      hint=f"shapes: {', '.join(bench.SHAPES)}; modes: {', '.join(bench.MODES)}"))
    modes, notes = bench.available_modes(mode.split(","))
    for note in notes:
        console.print(note, markup=False)
    console.print(f"GPU {torch.cuda.get_device_name()} · torch {torch.__version__} · seq {seq} · batch {batch} · "
                  f"LoRA r={lora_r} · gradient checkpointing {'off' if no_gc else 'on'}", markup=False)
    results, problems = [], []
    for shape in archs:
        folder = bench.checkpoint_dir(cache, shape)
        shape_results = []
        for m in modes:
            if max_seq_:
                attempts = bench.max_seq(shape, m, folder, lora_r, 16384, 1 << 20, timeout)
                shape_results += attempts
                best = [a for a in attempts if a.ok]
                console.print(f"{shape:<12} {m:<8} longest batch-1 sequence: {best[-1].seq if best else 'none'}"
                              + (f" ({best[-1].step_seconds:.1f} s/step, {best[-1].peak_gib:.1f} GiB)" if best else ""),
                              markup=False)
            else:
                spec = dict(arch=shape, mode=m, folder=str(folder), seq=seq, batch=batch, steps=steps, r=lora_r,
                            gc=not no_gc)
                r = bench.run_in_subprocess(spec, timeout)
                shape_results.append(r)
                base = next((x for x in shape_results if x.mode == "hf" and x.ok), None)
                speedup = f"{r.tokens_per_second / base.tokens_per_second:.2f}x" if base and r.ok else "-"
                line = (f"{shape:<12} {m:<8} tok/s {r.tokens_per_second:>9,.0f} ({speedup:>5})  peak {r.peak_gib:6.1f} GiB  "
                        f"MFU {r.mfu:5.1%}  loss {r.first_loss:.5f}  grad-norm {r.first_grad_norm:.5f}  "
                        f"trainable {r.trainable_params:,}") if r.ok else f"{shape:<12} {m:<8} failed: {r.error}"
                console.print(line, markup=False)
            results_all = results + shape_results
            out.write_text(_json.dumps([asdict(x) for x in results_all], indent=1))
        results += shape_results
        problems += bench.compare(shape_results)
        if not keep:
            _shutil.rmtree(folder, ignore_errors=True)
    console.print(f"results: {out}", markup=False)
    if problems:
        for p in problems:
            errors.print(p, markup=False, style="bold red")
        raise typer.Exit(1)


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


if __name__ == "__main__":
    main()
