"""Dynamic presets: per-tensor types chosen by measured sensitivity within a size budget.

For every tensor group (a role per layer: attn_q/k/v/output, ffn_gate/up/down, the
embeddings, the output), we quantise that tensor alone to the preset's low type through
ggml (importance-weighted when an imatrix is given), run the merged model in torch on the
calibration rows and measure the mean KL divergence of its next-token distribution from the
unquantised model's. That is the group's sensitivity. A higher type lowers the group's KL in
proportion to its (imatrix-weighted) rounding error, which ggml measures for every candidate
type. Starting from the low type everywhere, the upgrade with the most KL saved per added
byte is taken until the next one would pass the budget: the file size of llama.cpp's own
mix for the reference preset (q4_k_m for dynamic-q4, q3_k_m for dynamic-q3, q2_k for
dynamic-q2). Types and the sensitivity table go into the export report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftcli.export import ggml, quant_plan
from ftcli.export.gguf_hparams import read_config
from ftcli.export.gguf_tensors import detect_arch, gguf_name

# preset -> (reference preset whose size is the budget, types from low to high)
PRESETS = {
    "dynamic-q4": ("q4_k_m", ("Q4_K", "Q5_K", "Q6_K", "Q8_0")),
    "dynamic-q3": ("q3_k_m", ("Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")),
    "dynamic-q2": ("q2_k", ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")),
}
SENSITIVITY_TOKENS = 2048
ERROR_ROWS = 256


@dataclass
class Sensitivity:
    """Per tensor: KL when it alone is in the low type, and its rounding error in every candidate type."""
    low: str
    kl: dict[str, float]
    error: dict[str, dict[str, float]]


def measure(model_dir: Path, base: quant_plan.BaseFile, rows: list[list[int]], low: str,
            types: tuple[str, ...], imatrix: dict[str, np.ndarray] | None = None, progress=None) -> Sensitivity:
    """Quantise each tensor alone to `low` and measure the KL it adds on `rows` (streamed: one tensor at a time
    is replaced, the reference log-probabilities are computed once)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftcli.export.imatrix import progress_iter

    rows = _capped(rows, SENSITIVITY_TOKENS)
    arch = detect_arch(read_config(Path(model_dir)))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    params = _gguf_params(model, arch)
    names = [t.name for t in base.tensors if quant_plan.quantizable(t) and t.name in params]
    shapes = {t.name: t for t in base.tensors}
    with torch.no_grad():
        ref = [torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1) for ids in rows]
        kl, error = {}, {}
        for name in progress_iter(names, f"sensitivity ({low})", progress, unit="tensor"):
            param = params[name]
            w = param.data.clone()
            weights = None if imatrix is None else imatrix.get(name)
            w_np = w.numpy()
            deq = ggml.fake_quantize(w_np, quant_plan.fallback(low, shapes[name].row_length), weights)
            param.data.copy_(torch.from_numpy(deq))
            kl[name] = _mean_kl(model, rows, ref)
            param.data.copy_(w)
            # rows quantise independently: the error of every type on a fixed sample of rows is enough
            sample = w_np[np.random.default_rng(0).permutation(len(w_np))[:ERROR_ROWS]]
            error[name] = {}
            for qtype in types:
                diff = (ggml.fake_quantize(sample, quant_plan.fallback(qtype, shapes[name].row_length), weights)
                        - sample.astype(np.float16).astype(np.float32)) ** 2
                error[name][qtype] = float((diff * weights).sum() if weights is not None else diff.sum())
    del model
    return Sensitivity(low=low, kl=kl, error=error)


def _capped(rows: list[list[int]], budget: int) -> list[list[int]]:
    out = []
    for ids in rows:
        if budget <= 1:
            break
        out.append(ids[:budget])
        budget -= len(out[-1])
    return out


def _gguf_params(model, arch: str) -> dict:
    """GGUF tensor name -> the torch parameter it is written from (tied: token_embd, which lm_head shares)."""
    out = {}
    for hf_name, param in model.named_parameters():
        target = gguf_name(arch, hf_name)
        if target is not None and param.dim() == 2:
            out.setdefault(target, param)
    if "output.weight" in out and out["output.weight"].data_ptr() == out["token_embd.weight"].data_ptr():
        del out["output.weight"]
    return out


def _mean_kl(model, rows, ref) -> float:
    import torch

    total, n = 0.0, 0
    for ids, p_log in zip(rows, ref):
        q_log = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        total += float((p_log.exp() * (p_log - q_log)).sum())
        n += len(ids)
    return total / max(1, n)


def choose(base: quant_plan.BaseFile, preset: str, sens: Sensitivity) -> tuple[dict[str, str], dict]:
    """The plan for `preset` and its report section (budget, size, sensitivity table)."""
    ref_preset, types = PRESETS[preset]
    budget = quant_plan.planned_bytes(base, quant_plan.standard_plan(base, ref_preset))
    shapes = {t.name: t.shape for t in base.tensors}
    level = {name: 0 for name in sens.kl}
    plan = {t.name: quant_plan.fallback(types[0], t.row_length) for t in base.tensors if quant_plan.quantizable(t)}
    size = quant_plan.planned_bytes(base, plan)

    def est(name: str, i: int) -> float:
        low_err = sens.error[name][types[0]]
        return sens.kl[name] * (sens.error[name][types[i]] / low_err if low_err > 0 else 0.0)

    while True:
        best = None
        for name in sens.kl:
            cur = quant_plan.fallback(types[level[name]], shapes[name][0])
            for i in range(level[name] + 1, len(types)):
                new = quant_plan.fallback(types[i], shapes[name][0])
                cost = _padded(ggml.tensor_bytes(new, shapes[name]), base) - _padded(
                    ggml.tensor_bytes(cur, shapes[name]), base)
                gain = est(name, level[name]) - est(name, i)
                if cost <= 0 or gain <= 0 or size + cost > budget:
                    continue
                if best is None or gain / cost > best[0]:
                    best = (gain / cost, name, i, new, cost)
        if best is None:
            break
        _, name, i, new, cost = best
        level[name], plan[name] = i, new
        size = quant_plan.planned_bytes(base, plan)
    table = sorted(({"tensor": n, "kl_alone_in_low_type": float(f"{sens.kl[n]:.4g}"), "type": plan[n],
                     "estimated_kl": float(f"{est(n, level[n]):.4g}")} for n in sens.kl),
                   key=lambda r: -r["kl_alone_in_low_type"])
    section = {"preset": preset, "low_type": types[0], "budget_from": ref_preset, "budget_bytes": budget,
               "planned_bytes": size, "types": quant_plan.type_counts(plan), "sensitivity": table}
    return plan, section


def _padded(n: int, base: quant_plan.BaseFile) -> int:
    return -(-n // base.alignment) * base.alignment
