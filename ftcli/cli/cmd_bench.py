"""`ftcli bench`: speed and memory side by side on a GPU (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftcli.cli.app import app, console, errors, fail
from ftcli.errors import BadInput


DEFAULT_MODES = "hf,liger,unsloth,ftcli,ftcli-fast"


@app.command("bench")
def bench_cmd(
    arch: Annotated[str, typer.Option(help="Comma-separated shapes: llama3-8b, qwen3-8b, gemma3-4b, llama3.2-1b.")] = "llama3-8b",
    mode: Annotated[str, typer.Option(help="Comma-separated modes: hf, liger, unsloth, ftcli (train.memory lean), ftcli-fast (train.memory fast), ftcli-minimal (train.memory minimal); peers run where installed.")] = DEFAULT_MODES,
    seq: Annotated[int, typer.Option(help="Sequence length.")] = 2048,
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 4,
    steps: Annotated[int, typer.Option(help="Steps per mode; the median of steps 3..N is reported.")] = 8,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank on all 7 projections.")] = 16,
    no_gc: Annotated[bool, typer.Option("--no-gradient-checkpointing", help="Train without activation checkpointing.")] = False,
    max_seq_: Annotated[bool, typer.Option("--max-seq", help="Find the longest batch-1 sequence each mode trains (doubling from 16k).")] = False,
    out: Annotated[Path, typer.Option(help="JSON file, rewritten as each mode finishes.")] = Path("lora_step.json"),
    cache: Annotated[Path, typer.Option(help="Where the random-init checkpoints are written.")] = Path("/tmp/ftcli-bench"),
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="QLoRA: NF4 base weights (bitsandbytes) in every mode.")] = False,
    fast_budget: Annotated[float, typer.Option("--fast-budget", help="GiB for ftcli-fast (train.memory_budget_gib); 0 = plain HF's peak in this run, else 90% of the GPU.")] = 0.0,
    layers: Annotated[int, typer.Option(help="Keep only the first N decoder layers of each shape (quick profiling; not a benchmark row).")] = 0,
    profile: Annotated[Path | None, typer.Option(help="Folder: profile one extra step per mode (torch.profiler ops table by GPU time).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep each checkpoint after its shape is done.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per mode.")] = 900.0,
    e2e: Annotated[bool, typer.Option("--e2e", help="One epoch of the whole training path on mixed-length chats: "
                                                    "ftcli train against Unsloth, TRL and Liger through TRL's "
                                                    "SFTTrainer (modes: ftcli, ftcli-fast, unsloth, trl, liger).")] = False,
    mix: Annotated[str, typer.Option(help="--e2e: comma-separated chat mixes: long (median ~600 tokens), short "
                                          "(~150), uniform (every row max length).")] = "long",
    rows: Annotated[int, typer.Option(help="--e2e: conversations per mix (0: 400 long, 1500 short, 120 uniform).")] = 0,
) -> None:
    """Measure LoRA training speed and memory side by side: plain HF, Liger, Unsloth and ftcli in one run."""
    if e2e:
        _run_e2e(arch, mode if mode != DEFAULT_MODES else "ftcli,unsloth,trl,liger", mix, rows, load_in_4bit,
                 cache, out, timeout)
        return
    import json as _json
    import shutil as _shutil
    from dataclasses import asdict

    import torch

    from ftcli.bench import lora_step

    if not torch.cuda.is_available():
        fail(BadInput("ftcli bench needs a CUDA GPU", hint="run it on a GPU machine (`--e2e` also runs its plumbing on "
                                                          "the CPU)"))
    archs = [a.strip() for a in arch.split(",") if a.strip()]
    unknown = [a for a in archs if a not in lora_step.SHAPES]
    bad_modes = [m for m in mode.split(",") if m not in lora_step.MODES]
    if unknown or bad_modes:
        fail(BadInput(f"unknown {'shape' if unknown else 'mode'}: {', '.join(unknown or bad_modes)}",
                      hint=f"shapes: {', '.join(lora_step.SHAPES)}; modes: {', '.join(lora_step.MODES)}"))
    modes, notes = lora_step.available_modes(mode.split(","))
    for note in notes:
        console.print(note, markup=False)
    console.print(f"GPU {torch.cuda.get_device_name()} · torch {torch.__version__} · seq {seq} · batch {batch} · "
                  f"{'QLoRA (NF4)' if load_in_4bit else 'LoRA'} r={lora_r} · gradient checkpointing {'off' if no_gc else 'on'}", markup=False)
    results, problems = [], []
    for shape in archs:
        folder = lora_step.checkpoint_dir(cache, shape, layers or None)
        settings = dict(seq=seq, batch=batch, steps=steps, r=lora_r, gc=not no_gc, profile=profile,
                        fast_budget=fast_budget, four_bit=load_in_4bit, max_seq=max_seq_, timeout=timeout)
        shape_results = _run_shape(shape, modes, folder, settings, lambda done: out.write_text(
            _json.dumps([asdict(x) for x in results + done], indent=1)))
        results += shape_results
        problems += lora_step.compare(shape_results)
        if not keep:
            _shutil.rmtree(folder, ignore_errors=True)
    console.print(f"results: {out}", markup=False)
    if problems:
        for p in problems:
            errors.print(p, markup=False, style="bold red")
        raise typer.Exit(1)


def _run_shape(shape: str, modes: list[str], folder, settings: dict, save) -> list:
    """Every mode on one shape, each in its own process, one printed line per mode; `save(results)` after each."""
    from ftcli.bench import lora_step

    shape_results: list = []
    for m in modes:
        if settings["max_seq"]:
            attempts = lora_step.max_seq(shape, m, folder, settings["r"], 16384, 1 << 20, settings["timeout"])
            shape_results += attempts
            best = [a for a in attempts if a.ok]
            console.print(f"{shape:<12} {m:<8} longest batch-1 sequence: {best[-1].seq if best else 'none'}"
                          + (f" ({best[-1].step_seconds:.1f} s/step, {best[-1].peak_gib:.1f} GiB)" if best else ""),
                          markup=False)
        else:
            hf_peak = next((x.peak_gib for x in shape_results if x.mode == "hf" and x.ok), None)
            profile = settings["profile"]
            spec = dict(arch=shape, mode=m, folder=str(folder), seq=settings["seq"], batch=settings["batch"],
                        steps=settings["steps"], r=settings["r"], gc=settings["gc"],
                        profile=str(profile / f"{shape}-{m}.txt") if profile else None,
                        budget_gib=settings["fast_budget"] or hf_peak, four_bit=settings["four_bit"])
            if m == "ftcli-fast":
                console.print(f"{shape:<12} {m:<8} memory budget: "
                              + (f"{spec['budget_gib']:.1f} GiB" if spec["budget_gib"] else "90% of the GPU"),
                              markup=False)
            r = lora_step.run_in_subprocess(spec, settings["timeout"])
            shape_results.append(r)
            console.print(_mode_line(shape, r, next((x for x in shape_results if x.mode == "hf" and x.ok), None)),
                          markup=False)
        save(shape_results)
    return shape_results


def _mode_line(shape: str, r, base) -> str:
    """One mode's figures, its speed against plain HF's (`base`) in the same run."""
    if not r.ok:
        return f"{shape:<12} {r.mode:<8} failed: {r.error}"
    speedup = f"{r.tokens_per_second / base.tokens_per_second:.2f}x" if base else "-"
    return (f"{shape:<12} {r.mode:<8} tok/s {r.tokens_per_second:>9,.0f} ({speedup:>5})  peak {r.peak_gib:6.2f} GiB  "
            f"MFU {r.mfu:5.1%}  loss {r.first_loss:.5f}  grad-norm {r.first_grad_norm:.5f}  "
            f"trainable {r.trainable_params:,}" + (f"  [{r.checkpointing}]" if r.mode.startswith("ftcli") else ""))


def _run_e2e(arch: str, mode: str, mix: str, rows: int, four_bit: bool, cache: Path, out: Path, timeout: float):
    """`ftcli bench --e2e`: every mode trains one epoch of every mix, each in its own process."""
    import json as _json
    from dataclasses import asdict

    import torch

    from ftcli.bench import chats, e2e, lora_step

    archs = [a.strip() for a in arch.split(",") if a.strip()]
    modes, mixes = [m for m in mode.split(",") if m], [m for m in mix.split(",") if m]
    bad = ([a for a in archs if a not in lora_step.SHAPES] + [m for m in modes if m not in e2e.MODES]
           + [m for m in mixes if m not in chats.MIXES])
    if bad:
        fail(BadInput(f"unknown shape, mode or mix: {', '.join(bad)}",
                      hint=f"shapes: {', '.join(lora_step.SHAPES)}; modes: {', '.join(e2e.MODES)}; "
                           f"mixes: {', '.join(chats.MIXES)}"))
    modes, notes = lora_step.available_modes(modes)
    for note in notes:
        console.print(note, markup=False)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (plumbing only, not a benchmark)"
    console.print(f"end to end · {device} · torch {torch.__version__} · one epoch, batch 4, max length 2048, "
                  f"{'QLoRA (NF4)' if four_bit else 'LoRA'} r=16 · modes {', '.join(modes)}", markup=False)
    results = []
    for shape in archs:
        folder = lora_step.checkpoint_dir(cache, shape)
        for m in mixes:
            n = rows or e2e.ROWS[m]
            data = e2e.dataset(cache, folder, m, n)
            for mode_name in modes:
                spec = dict(arch=shape, mode=mode_name, mix=m, folder=str(folder), data=str(data), rows=n,
                            four_bit=four_bit)
                results.append(e2e.run_in_subprocess(spec, timeout))
                unsloth = next((r for r in results if r.mode == "unsloth" and r.arch == shape and r.mix == m), None)
                console.print(e2e.line(results[-1], unsloth), markup=False)
                out.write_text(_json.dumps([asdict(r) for r in results], indent=1))
    console.print(f"results: {out}", markup=False)
