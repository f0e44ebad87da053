"""GRPO memory and step time: plain TRL vs ftcli, side by side, one process per mode.

    python -m ftcli.bench.grpo --shape qwen3-8b --generations 8 --prompt-tokens 512 \\
        --completion-tokens 1024 --steps 3 --out grpo-bench.json

Both modes train the same random-init model of a real architecture (seeded, built on the GPU),
with LoRA r=16 on all linear layers, gradient checkpointing, bf16, the same prompts (exactly
`--prompt-tokens` long) and completions forced to exactly `--completion-tokens` tokens
(`min_new_tokens`), `--generations` completions of one prompt per step, HF generate.

- trl:   `GRPOTrainer(model, peft_config=LoraConfig(...), args=GRPOConfig(gradient_checkpointing=True))`,
         no Liger; TRL's own chunked fused LM head (TRL >= 1.15) computes the log-probs.
- ftcli: the path `ftcli train` takes: lora.add_lora, stages.grpo (pieces of ~4096 tokens per
         forward/backward, ftcli's log-prob kernel), ftcli's kernels (runner.train.apply_kernels).

Memory is read from torch.cuda.max_memory_allocated. "training memory" = peak minus the memory
after the model, LoRA and optimizer are loaded (AdamW states materialised before measuring);
the peak during generation is reported on its own. Run it from a folder other than the
repository root (or after `pip install -e .`), so that `kernels/` does not shadow a package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftcli.bench.lora_step import SHAPES, TOKENIZER_FAMILY, make_config
from ftcli.models.hf_compat import checkpointing_args

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("trl", "ftcli")
GiB = 1024**3


@dataclass
class GrpoBenchResult:
    shape: str
    mode: str
    ok: bool = True
    error: str | None = None
    generations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    loaded_gib: float = 0.0          # model + LoRA + optimizer states
    peak_gib: float = 0.0            # whole run
    training_gib: float = 0.0        # peak - loaded
    generation_peak_gib: float = 0.0  # peak inside generation (+ old/ref log-probs), minus loaded
    step_seconds: float = 0.0        # median optimizer step after the first
    generation_seconds: float = 0.0  # of which: generation + rewards + old/ref log-probs (median after the first)
    step_times: list[float] = field(default_factory=list)
    generation_times: list[float] = field(default_factory=list)
    first_loss: float = float("nan")
    first_grad_norm: float = float("nan")
    mean_completion_length: float = 0.0
    versions: dict = field(default_factory=dict)


def _prompt_text(tokenizer, n_tokens: int) -> str:
    """A text that `tokenizer(text)` turns into exactly n_tokens ids (TRL tokenizes text prompts so)."""
    words = max(1, n_tokens)
    text = "the" + " the" * (words - 1)
    while len(tokenizer(text)["input_ids"]) > n_tokens and words > 1:
        words -= 1
        text = "the" + " the" * (words - 1)
    while len(tokenizer(text)["input_ids"]) < n_tokens:
        text += " the"
    if len(tokenizer(text)["input_ids"]) != n_tokens:
        raise RuntimeError(f"could not build a prompt of exactly {n_tokens} tokens")
    return text


def _reward(completions, completion_ids=None, **_kwargs):
    """Cheap and varied, so advantages are not all zero (a real backward either way)."""
    return [(sum(ids) % 97) / 97.0 for ids in completion_ids]


def _model(shape: str):
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(shape)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                 attn_implementation="sdpa")
    return model


def _tokenizer(shape: str):
    from transformers import AutoTokenizer

    from ftcli.models.builtin import builtin_path

    tokenizer = AutoTokenizer.from_pretrained(builtin_path(TOKENIZER_FAMILY[SHAPES[shape][1]]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _dataset(tokenizer, prompt_tokens: int, rows: int):
    import datasets

    text = _prompt_text(tokenizer, prompt_tokens)
    return datasets.Dataset.from_list([{"prompt": text} for _ in range(rows)])


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _trl_trainer(spec: dict, model, tokenizer, dataset, out_dir: str):
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=spec["generations"],
        gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True, seed=0, data_seed=0,
        **checkpointing_args(True),
        bf16=cuda, fp16=False, use_cpu=not cuda, use_liger_kernel=False,
        num_generations=spec["generations"], max_completion_length=spec["completion_tokens"],
        generation_kwargs={"min_new_tokens": spec["completion_tokens"]}, temperature=1.0, beta=0.0,
        loss_type="dapo", remove_unused_columns=False,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    return GRPOTrainer(model=model, reward_funcs=[_reward], args=args, train_dataset=dataset,
                       processing_class=tokenizer, peft_config=peft_config)


def _ftcli_trainer(spec: dict, model, tokenizer, dataset, out_dir: str):
    import torch
    from transformers import set_seed

    from ftcli.data import templates
    from ftcli.models import lora
    from ftcli.recipe import Recipe
    from ftcli.runner import train as training
    from ftcli.stages import grpo, trainer_args

    cuda = torch.cuda.is_available()
    recipe = Recipe.model_validate({
        "model": {"name": "bench", "dtype": "bfloat16" if cuda else "float32", "max_seq_length": 1 << 16},
        "dataset": {"path": "bench", "format": "prompt"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS},
        "train": {"stage": "grpo", "max_steps": spec["steps"], "per_device_train_batch_size": spec["generations"],
                  "gradient_accumulation_steps": 1, "learning_rate": 1e-5, "lr_scheduler_type": "constant",
                  "gradient_checkpointing": True, "logging_steps": 1, "seed": 0,
                  "kernels": spec.get("kernels", "auto"),
                  "grpo": {"num_generations": spec["generations"], "max_prompt_length": spec["prompt_tokens"],
                           "max_completion_length": spec["completion_tokens"], "temperature": 1.0, "beta": 0.0,
                           "loss_type": "dapo", "sequences_per_forward": spec.get("sequences_per_forward", "auto"),
                           "rewards": [{"type": "length", "max_length": 1}]}},
        "output_dir": out_dir,
    })
    template = templates.load_family("qwen3" if "qwen" in SHAPES[spec["shape"]][1] else "llama3")
    set_seed(0)  # as GRPOTrainer does before it wraps the model: the same LoRA A in both modes
    model = lora.add_lora(model, recipe.lora, True)
    trainer = grpo.build_trainer(recipe, model, tokenizer, template, dataset, None, out_dir,
                                 trainer_args.precision_flags(torch.bfloat16 if cuda else torch.float32), [], [],
                                 [_reward], log=print)
    trainer.generation_config.min_new_tokens = spec["completion_tokens"]
    if isinstance(getattr(trainer, "generation_kwargs", None), dict):
        trainer.generation_kwargs["min_new_tokens"] = spec["completion_tokens"]
    training.apply_kernels(recipe, grpo.GrpoStage(), trainer.model, print)
    return trainer


def run_mode(spec: dict) -> GrpoBenchResult:
    import torch

    result = GrpoBenchResult(shape=spec["shape"], mode=spec["mode"], generations=spec["generations"],
                             prompt_tokens=spec["prompt_tokens"], completion_tokens=spec["completion_tokens"],
                             steps=spec["steps"], versions=_versions())
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    allocated = torch.cuda.memory_allocated if cuda else (lambda: 0)
    peak = torch.cuda.max_memory_allocated if cuda else (lambda: 0)

    tokenizer = _tokenizer(spec["shape"])
    dataset = _dataset(tokenizer, spec["prompt_tokens"], rows=max(8, spec["steps"] * 2))
    model = _model(spec["shape"])
    out_dir = spec.get("out_dir", "/tmp/ftcli-bench-grpo")
    build = _trl_trainer if spec["mode"] == "trl" else _ftcli_trainer
    trainer = build(spec, model, tokenizer, dataset, out_dir)

    _create_optimizer_state(trainer)
    sync()
    result.loaded_gib = allocated() / GiB
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    state = {"peak": 0, "gen_peak": 0, "start": 0.0}
    generate = trainer._generate_and_score_completions

    def measured_generate(inputs):
        state["peak"] = max(state["peak"], peak())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        torch.manual_seed(1000 + len(result.generation_times))  # both modes sample the same completions
        began = time.perf_counter()
        out = generate(inputs)
        sync()
        result.generation_times.append(time.perf_counter() - began)
        state["gen_peak"] = max(state["gen_peak"], peak())
        result.mean_completion_length = float(out["completion_mask"].sum(1).float().mean())
        return out

    trainer._generate_and_score_completions = measured_generate

    trainer.add_callback(_step_timer(result, state, sync))
    trainer.train()
    sync()
    _summarise(result, max(state["peak"], peak(), state["gen_peak"]), state["gen_peak"])
    return result


def _step_timer(result: GrpoBenchResult, state: dict, sync):
    """A callback that times each optimizer step (synchronised) and keeps the first logged loss and grad norm."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, s, control, **kw):
            sync()
            state["start"] = time.perf_counter()

        def on_step_end(self, args, s, control, **kw):
            sync()
            result.step_times.append(time.perf_counter() - state["start"])

        def on_log(self, args, s, control, logs=None, **kw):
            if logs and "loss" in logs and result.first_loss != result.first_loss:
                result.first_loss = float(logs["loss"])
                result.first_grad_norm = float(logs.get("grad_norm", float("nan")))

    return Timer()


def _create_optimizer_state(trainer) -> None:
    """The optimizer with its AdamW states (zero gradients: the weights do not move), so memory is measured
    from a state that already holds them."""
    import torch

    trainer.create_optimizer()
    for p in trainer.model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def _summarise(result: GrpoBenchResult, top_bytes: float, generation_peak_bytes: float) -> None:
    """Peaks and the median step and generation times (the first step, which compiles and warms up, left out)."""
    result.peak_gib = top_bytes / GiB
    result.training_gib = result.peak_gib - result.loaded_gib
    result.generation_peak_gib = generation_peak_bytes / GiB - result.loaded_gib
    later = result.step_times[1:] or result.step_times
    result.step_seconds = statistics.median(later) if later else 0.0
    gens = result.generation_times[1:] or result.generation_times
    result.generation_seconds = statistics.median(gens) if gens else 0.0


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = run_mode(spec)
    except Exception as err:  # a failed mode is reported, never a crash of the whole bench
        oom = "out of memory" in str(err).lower()
        result = GrpoBenchResult(shape=spec["shape"], mode=spec["mode"], ok=False,
                                 error=("OOM: " if oom else "") + f"{type(err).__name__}: {str(err)[:400]}")
    print("FTCLI_GRPO_BENCH " + json.dumps(asdict(result)), flush=True)
    return 0


def run_in_subprocess(spec: dict, timeout: float) -> GrpoBenchResult:
    cmd = [sys.executable, "-m", "ftcli.bench.grpo", "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return GrpoBenchResult(shape=spec["shape"], mode=spec["mode"], ok=False,
                               error=f"timed out after {timeout:.0f} s")
    for line in out.stdout.splitlines():
        if line.startswith("FTCLI_GRPO_BENCH "):
            return GrpoBenchResult(**json.loads(line.split(" ", 1)[1]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
    return GrpoBenchResult(shape=spec["shape"], mode=spec["mode"], ok=False, error=" | ".join(tail)[:800])


def table(results: list[GrpoBenchResult]) -> str:
    lines = [f"{'mode':6} {'loaded GiB':>10} {'peak GiB':>9} {'training GiB':>12} {'generation GiB':>14} "
             f"{'step s':>7} {'gen s':>7} {'loss':>9}"]
    for r in results:
        if not r.ok:
            lines.append(f"{r.mode:6} FAILED: {r.error}")
            continue
        lines.append(f"{r.mode:6} {r.loaded_gib:10.2f} {r.peak_gib:9.2f} {r.training_gib:12.2f} "
                     f"{r.generation_peak_gib:14.2f} {r.step_seconds:7.2f} {r.generation_seconds:7.2f} "
                     f"{r.first_loss:9.5f}")
    ok = {r.mode: r for r in results if r.ok}
    if "trl" in ok and "ftcli" in ok:
        if ok["trl"].training_gib > 0:
            ratio = ok["ftcli"].training_gib / ok["trl"].training_gib
            lines.append(f"ftcli training memory = {ratio:.2f}x plain TRL's (bar: <= 0.50x); "
                         f"step time {ok['ftcli'].step_seconds / max(ok['trl'].step_seconds, 1e-9):.2f}x")
        a, b = ok["ftcli"].first_grad_norm, ok["trl"].first_grad_norm
        apart = abs(a - b) / max(abs(b), 1e-12)
        lines.append(f"first-step LoRA grad norm: ftcli {a:.5f}, TRL {b:.5f} ({apart:.2%} apart; same seeds, so "
                     "the same completions)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftcli.bench.grpo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="qwen3-8b", choices=sorted(SHAPES))
    parser.add_argument("--modes", default="trl,ftcli")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--completion-tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sequences-per-forward", default="auto", help="ftcli mode: auto, all or a number")
    parser.add_argument("--kernels", default="auto", help="ftcli mode: train.kernels (auto, false)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("grpo-bench.json"))
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    per = args.sequences_per_forward
    per = int(per) if per.isdigit() else per
    kernels = {"false": False, "true": True}.get(args.kernels, args.kernels)
    results = []
    for mode in args.modes.split(","):
        spec = dict(shape=args.shape, mode=mode, generations=args.generations, prompt_tokens=args.prompt_tokens,
                    completion_tokens=args.completion_tokens, steps=args.steps, sequences_per_forward=per,
                    kernels=kernels, out_dir=f"/tmp/ftcli-bench-grpo-{mode}")
        print(f"[bench_grpo] {args.shape} {mode}: {args.generations} x ({args.prompt_tokens} + "
              f"{args.completion_tokens}) tokens, {args.steps} steps", flush=True)
        results.append(run_in_subprocess(spec, args.timeout))
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8")
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
