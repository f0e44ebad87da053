"""`ftcli bench`: the same LoRA training step, measured side by side in one invocation.

For each shape a random-init checkpoint is written once (seeded) and every mode loads it in
its own process, so patches and compile caches never leak between modes. Every mode trains
on identical token ids with the same LoRA targets, rank, dtype and optimizer, and reports
tokens/s, peak memory, MFU, and its first-step loss and LoRA gradient norm, which must
match plain Hugging Face's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftcli.engine.memory import flops_per_token
from ftcli.models.hf_compat import enable_checkpointing

MODES = ("hf", "liger", "unsloth", "ftcli", "ftcli-fast", "ftcli-minimal")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_BF16_FLOPS = 989e12  # H100/H200 dense bf16 datasheet peak (research/kernels.md §1.2)

# Real architectures' shapes (random weights): name -> (config class, model type for Liger, config kwargs).
SHAPES: dict[str, tuple[str, str, dict]] = {
    "llama3-8b": ("LlamaConfig", "llama", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "llama3.2-1b": ("LlamaConfig", "llama", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192))),
    # A few-MB Llama for a CPU smoke test of the bench's own plumbing (not a benchmark).
    "tiny-llama": ("LlamaConfig", "llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=4096)),
    "qwen3-8b": ("Qwen3Config", "qwen3", dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_position_embeddings=40960, rope_parameters=dict(rope_type="default", rope_theta=1000000.0))),
    "gemma3-4b": ("Gemma3TextConfig", "gemma3_text", dict(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=262208, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
        sliding_window=1024, tie_word_embeddings=True, max_position_embeddings=131072,
        final_logit_softcapping=None, attn_logit_softcapping=None,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 5 + ["sliding_attention"] * 4)),
}
TOKENIZER_FAMILY = {"llama": "tiny-llama3", "qwen3": "tiny-qwen3", "gemma3_text": "tiny-gemma3"}


@dataclass
class ModeResult:
    arch: str
    mode: str
    ok: bool = True
    error: str | None = None
    seq: int = 0
    batch: int = 0
    steps: int = 0
    trainable_params: int = 0
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_gib: float = 0.0
    mfu: float = 0.0
    first_loss: float = float("nan")
    first_grad_norm: float = float("nan")
    step_times: list[float] = field(default_factory=list)
    checkpointing: str = ""
    four_bit: bool = False


# --------------------------------------------------------------------------- shapes and FLOPs


def make_config(arch: str, layers: int | None = None):
    """The config of a shape; `layers` keeps only the first N decoder layers (quick profiling)."""
    import transformers

    class_name, _, kwargs = SHAPES[arch]
    if layers:
        kwargs = dict(kwargs, num_hidden_layers=layers)
        if "layer_types" in kwargs:
            kwargs["layer_types"] = kwargs["layer_types"][:layers]
    return getattr(transformers, class_name)(**kwargs)


def checkpoint_dir(root: Path, arch: str, layers: int | None = None) -> Path:
    """Write the seeded random-init checkpoint of `arch` once; every mode loads this folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcli.models.builtin import builtin_path

    folder = root / (f"{arch}-{layers}layers" if layers else arch)
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    config = make_config(arch, layers)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(builtin_path(TOKENIZER_FAMILY[SHAPES[arch][1]]))
    tokenizer.save_pretrained(folder)
    (folder / "done").write_text("ok")
    del model
    return folder


# --------------------------------------------------------------------------- one mode, in its own process


def _load(mode: str, folder: Path, model_type: str, gc: bool, r: int, tokens: tuple[int, int] = (4, 2048),
          budget_gib: float | None = None, four_bit: bool = False):
    import torch

    if mode == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        from unsloth import FastLanguageModel  # must come before transformers is used

        model, _ = FastLanguageModel.from_pretrained(str(folder), dtype=torch.bfloat16, load_in_4bit=four_bit,
                                                     local_files_only=True, max_seq_length=1 << 20)
        torch.manual_seed(1)
        return FastLanguageModel.get_peft_model(model, r=r, lora_alpha=r, lora_dropout=0, target_modules=TARGETS,
                                                use_gradient_checkpointing="unsloth" if gc else False)
    if mode == "liger":
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel

        _apply_liger_kernel(model_type)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    quant = None
    if four_bit:  # QLoRA as Unsloth loads it: NF4 with double quantisation, bf16 compute
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 device_map=_device(), quantization_config=quant)
    if gc and not mode.startswith("ftcli"):
        enable_checkpointing(model)
        model.enable_input_require_grads()
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    if mode.startswith("ftcli"):
        from ftcli.engine import checkpointing, patch

        patch.apply(model, "auto")
        plan = _ftcli_plan(mode, model.config, gc, r, tokens, budget_gib, four_bit)
        checkpointing.apply(model, plan)
        model.ftcli_checkpointing = plan.describe()
    return model


def _ftcli_plan(mode: str, config, gc: bool, r: int, tokens: tuple[int, int], budget_gib: float | None,
                four_bit: bool):
    """ftcli: train.memory lean (offloaded recompute); ftcli-fast: train.memory fast within `budget_gib`;
    ftcli-minimal: train.memory minimal (lean with attention and MLP recomputed as separate blocks)."""
    from types import SimpleNamespace

    from ftcli.engine import memory, plan

    memory_preset = {"ftcli-fast": "fast", "ftcli-minimal": "minimal"}.get(mode, "lean")
    train = SimpleNamespace(gradient_checkpointing="auto" if gc else False, memory=memory_preset,
                            memory_budget_gib=budget_gib)
    kwargs = dict(batch=tokens[0], seq=tokens[1], lora_r=r, fused_kernels=True, load_in_4bit=four_bit)
    machine = plan.Machine.current()
    return plan.decide(train, memory.Shape.from_config(config), kwargs, on_gpu=_device() == "cuda",
                       gpu_bytes=machine.gpu_bytes or 0, host_bytes=machine.host_bytes)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_mode(arch: str, mode: str, folder: Path, seq: int, batch: int, steps: int, r: int, gc: bool,
             profile: str | None = None, budget_gib: float | None = None, four_bit: bool = False) -> ModeResult:
    import torch

    result = ModeResult(arch=arch, mode=mode, seq=seq, batch=batch, steps=steps, four_bit=four_bit)
    model = _load(mode, folder, SHAPES[arch][1], gc, r, (batch, seq), budget_gib, four_bit)
    result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.checkpointing = getattr(model, "ftcli_checkpointing", "all layers recompute" if gc else "off")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(123)).to(_device())
    _sync()
    for step in range(steps):
        start = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        if step == 0:
            grads = [p.grad.float().norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
            result.first_loss = out.loss.item()
            result.first_grad_norm = torch.stack(grads).norm().item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        result.step_times.append(time.perf_counter() - start)
    if profile:
        _profile_step(model, optimizer, ids, Path(profile))
    measured = result.step_times[2:] or result.step_times
    result.step_seconds = statistics.median(measured)
    result.tokens_per_second = batch * seq / result.step_seconds
    result.peak_gib = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0
    lora = result.trainable_params
    result.mfu = result.tokens_per_second * flops_per_token(model.config, seq, lora) / PEAK_BF16_FLOPS
    return result


def _profile_step(model, optimizer, ids, path: Path) -> None:
    """One more step under torch.profiler; writes its ops table, sorted by GPU time, to `path`, and its
    timeline (chrome://tracing or Perfetto) gzipped beside it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = prof.key_averages()
    path.write_text(_gpu_busy_line(prof) + table.table(sort_by=sort, row_limit=60, max_name_column_width=70)
                    + "\nBy self CPU time (host-side stalls: synchronisations, launches):\n"
                    + table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    prof.export_chrome_trace(str(path.with_suffix(".trace.json.gz")))  # the profiler gzips by the suffix


def covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (overlapping kernels on several streams count once)."""
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def _gpu_busy_line(prof) -> str:
    """How much of the profiled step the GPU was busy: the union of its kernels' and copies' intervals
    against the step's wall time. Idle GPU time is time the host did not keep it fed."""
    from torch.autograd import DeviceType

    spans = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not spans:
        return ""
    busy, wall = covered(spans), max(b for _, b in spans) - min(a for a, _ in spans)
    return f"GPU busy {busy / 1e3:.1f} ms of {wall / 1e3:.1f} ms from first to last GPU op ({busy / wall:.0%})\n\n"


def worker_main(argv: list[str]) -> int:
    """Entry of the per-mode subprocess: run one mode, print one JSON line."""
    spec = json.loads(argv[0])
    try:
        result = run_mode(spec["arch"], spec["mode"], Path(spec["folder"]), spec["seq"], spec["batch"],
                          spec["steps"], spec["r"], spec["gc"], spec.get("profile"), spec.get("budget_gib"),
                          spec.get("four_bit", False))
    except Exception as err:  # reported as a failed mode, never a crash of the whole bench
        oom = "out of memory" in str(err).lower()
        result = ModeResult(arch=spec["arch"], mode=spec["mode"], ok=False, seq=spec["seq"], batch=spec["batch"],
                            error=("OOM: " if oom else "") + f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    print("FTCLI_BENCH_RESULT " + json.dumps(asdict(result)), flush=True)
    return 0


def run_in_subprocess(spec: dict, timeout: float) -> ModeResult:
    cmd = [sys.executable, "-m", "ftcli.bench.lora_step", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ModeResult(arch=spec["arch"], mode=spec["mode"], ok=False, error=f"timed out after {timeout:.0f} s")
    for line in out.stdout.splitlines():
        if line.startswith("FTCLI_BENCH_RESULT "):
            return ModeResult(**json.loads(line.split(" ", 1)[1]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return ModeResult(arch=spec["arch"], mode=spec["mode"], ok=False, error=" | ".join(tail)[:500])


def available_modes(modes: list[str]) -> tuple[list[str], list[str]]:
    """Modes whose packages are installed, and notices for the others."""
    import importlib.util

    needs = {"liger": "liger_kernel", "unsloth": "unsloth"}
    keep, notes = [], []
    for mode in modes:
        package = needs.get(mode)
        if package and importlib.util.find_spec(package) is None:
            notes.append(f"{mode}: skipped ({package} is not installed)")
        else:
            keep.append(mode)
    return keep, notes


def compare(results: list[ModeResult]) -> list[str]:
    """Problems when ftcli's first step differs from plain HF's (loss > 1%, grad norm > 5%)."""
    by_mode = {r.mode: r for r in results if r.ok}
    hf = by_mode.get("hf")
    ours = [by_mode[mode] for mode in ("ftcli", "ftcli-fast", "ftcli-minimal") if mode in by_mode]
    return [p for row in ours if hf for p in _compare(hf, row)]


def _compare(hf: ModeResult, ours: ModeResult) -> list[str]:
    problems = []
    loss_diff = abs(ours.first_loss - hf.first_loss) / abs(hf.first_loss)
    grad_diff = abs(ours.first_grad_norm - hf.first_grad_norm) / max(hf.first_grad_norm, 1e-12)
    if not loss_diff <= 0.01:
        problems.append(f"{ours.arch}: {ours.mode} first-step loss {ours.first_loss:.5f} vs HF {hf.first_loss:.5f} "
                        f"({loss_diff:.2%} > 1%)")
    if not grad_diff <= 0.05:
        problems.append(f"{ours.arch}: {ours.mode} first-step grad norm {ours.first_grad_norm:.5f} vs HF "
                        f"{hf.first_grad_norm:.5f} ({grad_diff:.2%} > 5%)")
    return problems


def max_seq(arch: str, mode: str, folder: Path, r: int, start: int, limit: int, timeout: float) -> list[ModeResult]:
    """Double the batch-1 sequence from `start` until a step fails; every attempt is returned."""
    attempts, seq = [], start
    while seq <= limit:
        spec = dict(arch=arch, mode=mode, folder=str(folder), seq=seq, batch=1, steps=2, r=r, gc=True)
        result = run_in_subprocess(spec, timeout)
        attempts.append(result)
        if not result.ok:
            break
        seq *= 2
    return attempts


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
