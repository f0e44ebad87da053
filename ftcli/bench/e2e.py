"""`ftcli bench --e2e`: one epoch of the whole training path on mixed-length chats, side by side.

Every mode trains the same seeded random-init checkpoint (lora_step.checkpoint_dir) on the same rows
(chats.py) for one epoch, in its own process: LoRA r=16, alpha 16, dropout 0 on the 7 projections, batch 4,
max_seq_length 2048, AdamW at a constant lr 1e-4, bf16, loss on every token.
  ftcli / ftcli-fast   `ftcli train` itself (runner.train.run on a recipe): train.memory lean / fast,
                       train.packing auto
  unsloth              Unsloth's own path: FastLanguageModel + TRL SFTTrainer, packing on
  trl                  plain TRL SFTTrainer, packing on (padding-free), sdpa, non-reentrant checkpointing
  liger                the same with use_liger_kernel
Each reports real tokens/s (tokens that are not padding, over train_runtime), peak GiB, the loss (the mean
of the last 10 logged steps, the first step's, and every step's) and its own real-token count. Peers run only where installed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftcli.bench import chats
from ftcli.bench.lora_step import SHAPES, TARGETS

MODES = ("ftcli", "ftcli-fast", "unsloth", "trl", "liger")
TEMPLATE = {"llama": "llama3", "qwen3": "qwen3", "gemma3_text": "gemma3"}
ROWS = {"long": 400, "short": 1500, "uniform": 120}
SETTINGS = dict(seq=2048, batch=4, r=16, lr=1e-4, seed=0)


@dataclass
class E2EResult:
    arch: str
    mode: str
    mix: str
    ok: bool
    error: str | None = None
    rows: int = 0
    real_tokens: int = 0
    train_seconds: float = 0.0
    tokens_per_second: float = 0.0
    steady_tokens_per_second: float = 0.0
    peak_gib: float = 0.0
    final_loss: float = float("nan")
    first_loss: float = float("nan")  # before any update: every mode must agree here if its loss is the same mean
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    four_bit: bool = False
    notes: list[str] = field(default_factory=list)


def dataset(cache: Path, folder: Path, mix: str, rows: int) -> Path:
    """The mix's JSONL (written once), calibrated on the checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    return chats.write(cache / f"chats-{mix}-{rows}.jsonl", mix, rows, AutoTokenizer.from_pretrained(folder))


def run_in_subprocess(spec: dict, timeout: float) -> E2EResult:
    cmd = [sys.executable, "-m", "ftcli.bench.e2e", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return E2EResult(spec["arch"], spec["mode"], spec["mix"], ok=False, error=f"timed out after {timeout:.0f} s")
    for line in out.stdout.splitlines():
        if line.startswith("FTCLI_E2E_RESULT "):
            return E2EResult(**json.loads(line.split(" ", 1)[1]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return E2EResult(spec["arch"], spec["mode"], spec["mix"], ok=False, error=" | ".join(tail)[:500])


def worker_main(argv: list[str]) -> int:
    """Entry of the per-mode subprocess: train one epoch, print one JSON line."""
    spec = json.loads(argv[0])
    try:
        result = (_ftcli if spec["mode"].startswith("ftcli") else _peer)(spec)
    except Exception as err:  # reported as a failed mode, never a crash of the whole bench
        result = E2EResult(spec["arch"], spec["mode"], spec["mix"], ok=False,
                           error=f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
    print("FTCLI_E2E_RESULT " + json.dumps(asdict(result)), flush=True)
    return 0


def _recipe(spec: dict, out_dir: Path) -> dict:
    family = SHAPES[spec["arch"]][1]
    s = {**SETTINGS, **spec.get("settings", {})}
    return {
        "model": {"name": spec["folder"], "max_seq_length": s["seq"], "load_in_4bit": spec.get("four_bit", False),
                  "doctor": "warn"},
        "template": {"name": TEMPLATE[family], "train_on": "all"},
        "dataset": {"path": spec["data"], "format": "messages"},
        "lora": {"r": s["r"], "alpha": s["r"], "dropout": 0.0, "target_modules": list(TARGETS)},
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": s["batch"], "gradient_accumulation_steps": 1,
                  "learning_rate": s["lr"], "lr_scheduler_type": "constant", "seed": s["seed"], "logging_steps": 1,
                  "memory": "fast" if spec["mode"] == "ftcli-fast" else "lean", "packing": spec.get("packing", "auto")},
        "output_dir": str(out_dir / "run"),
    }


def _ftcli(spec: dict) -> E2EResult:
    import torch
    import yaml

    from ftcli import recipe
    from ftcli.runner import train as training

    out_dir = Path(tempfile.mkdtemp(prefix="ftcli-e2e-"))
    path = out_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(spec, out_dir)), encoding="utf-8")
    notes: list[str] = []
    result = training.run(recipe.load(path), log=notes.append)
    logs = result.metrics
    end = next((m for m in reversed(logs) if "train_runtime" in m), {})
    tokens = next((int(m["num_tokens"]) for m in reversed(logs) if "num_tokens" in m), 0)
    return _result(spec, logs, tokens, end.get("train_runtime", 0.0), end.get("steady_tokens_per_second", 0.0),
                   torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
                   [n for n in notes if n.startswith(("packing", "activation", "kernels"))])


def _result(spec: dict, logs: list[dict], tokens: int, seconds: float, steady: float, peak: int,
            notes: list[str]) -> E2EResult:
    losses = [m["loss"] for m in logs if "loss" in m]
    return E2EResult(spec["arch"], spec["mode"], spec["mix"], ok=True, rows=spec["rows"], real_tokens=tokens,
                     train_seconds=round(seconds, 2), tokens_per_second=round(tokens / seconds, 1) if seconds else 0.0,
                     steady_tokens_per_second=steady, peak_gib=round(peak / 2**30, 2),
                     final_loss=statistics.fmean(losses[-10:]) if losses else float("nan"),
                     first_loss=losses[0] if losses else float("nan"), losses=[round(x, 5) for x in losses],
                     steps=len(losses), four_bit=spec.get("four_bit", False), notes=notes)


def _peer(spec: dict) -> E2EResult:
    """Unsloth, plain TRL or Liger through TRL's SFTTrainer, packing on, each with its own defaults."""
    if spec["mode"] == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # noqa: F401  (must come before transformers and TRL)
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from ftcli.models.hf_compat import checkpointing_args

    s = {**SETTINGS, **spec.get("settings", {})}
    model, tokenizer, peft_config = _peer_model(spec, s)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text(encoding="utf-8").splitlines()]
    cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="ftcli-e2e-"), per_device_train_batch_size=s["batch"],
        gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=s["lr"], lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to=[], seed=s["seed"], bf16=cuda, use_cpu=not cuda,
        max_length=s["seq"], packing=True, use_liger_kernel=spec["mode"] == "liger", disable_tqdm=True,
        **(checkpointing_args(True) if spec["mode"] != "unsloth" else {}))
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    out = trainer.train()
    logs = trainer.state.log_history
    # The packed, padding-free dataset's tokens are the real tokens of the epoch (not every peer logs num_tokens).
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    return _result(spec, logs, tokens, out.metrics["train_runtime"], 0.0, peak, [])


def _peer_model(spec: dict, s: dict):
    """(model, tokenizer, peft_config or None): Unsloth's own loader and LoRA, or transformers + TRL's PEFT."""
    import torch

    folder = spec["folder"]
    if spec["mode"] == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(folder, dtype=torch.bfloat16, max_seq_length=s["seq"],
                                                             load_in_4bit=spec.get("four_bit", False),
                                                             local_files_only=True)
        model = FastLanguageModel.get_peft_model(model, r=s["r"], lora_alpha=s["r"], lora_dropout=0,
                                                 target_modules=list(TARGETS), use_gradient_checkpointing="unsloth",
                                                 random_state=s["seed"])
        return model, tokenizer, None
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16) if spec.get("four_bit") else None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa", quantization_config=quant,
                                                 device_map="cuda" if cuda else "cpu")
    lora = LoraConfig(r=s["r"], lora_alpha=s["r"], lora_dropout=0.0, target_modules=list(TARGETS),
                      task_type="CAUSAL_LM")
    return model, AutoTokenizer.from_pretrained(folder), lora


def line(r: E2EResult, unsloth: E2EResult | None) -> str:
    """One mode's figures, its speed against Unsloth's packing path in the same run."""
    head = f"{r.arch:<12} {r.mix:<7} {r.mode:<10}"
    if not r.ok:
        return f"{head} failed: {r.error}"
    versus = (f" ({r.tokens_per_second / unsloth.tokens_per_second:.2f}x unsloth)"
              if unsloth and unsloth.ok and unsloth.tokens_per_second else "")
    steady = f", {r.steady_tokens_per_second:,.0f} after 3 steps" if r.steady_tokens_per_second else ""
    return (f"{head} real tok/s {r.tokens_per_second:>8,.0f}{versus}{steady}  peak {r.peak_gib:6.2f} GiB  "
            f"loss {r.final_loss:.4f} (first {r.first_loss:.4f})  tokens {r.real_tokens:,} in {r.train_seconds:.1f} s, {r.steps} steps")


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
