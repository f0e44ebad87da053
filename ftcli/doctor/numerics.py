"""`ftcli doctor --numerics RECIPE`: on the user's own model and a few of their samples, check
that the loss is what the math says (research/doctor-bugs.md G; DESIGN.md promise 1):

  numerics-ga       batch x GA micro-batches, each summed per token and divided by the token count
                    of the whole step, equals one big batch (and how far the naive mean would be);
  numerics-packing  the samples packed into one row (position_ids restarting per sample) give the
                    same loss as the padded batch: attention does not leak across samples;
  numerics-kernels  ftcli.engine.patch's kernels give the same loss as the unpatched model (not checked
                    when ftcli.engine.patch is not available).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ftcli import recipe as recipe_mod
from ftcli.data import formats, packing, supervised, templates
from ftcli.data.messages import as_messages
from ftcli.doctor.registry import Finding
from ftcli.doctor.report import Report
from ftcli.errors import BadInput
from ftcli.models import pretrained

IGNORE = -100
NUMERIC_CHECKS = {
    "numerics-ga": ("gradient accumulation must equal one big batch (sum of token losses / tokens in the step)",
                    "DESIGN.md promise 1"),
    "numerics-packing": ("use an attention implementation that honours packed position_ids, or turn packing off",
                         "DESIGN.md promise 1"),
    "numerics-kernels": ("report the op and shapes: patched kernels must match the PyTorch reference",
                         "DESIGN.md promise 1"),
}


def _finding(check: str, severity: str, message: str) -> Finding:
    fix, row = NUMERIC_CHECKS[check]
    return Finding(check, severity, message, False, fix, row)


def _batch(samples: list[dict], pad_id: int, device) -> dict:
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _targets(labels: torch.Tensor) -> int:
    return int((labels[..., 1:] != IGNORE).sum())


def _loss(model, batch: dict, num_items: int | None = None) -> float:
    kwargs = {"num_items_in_batch": torch.tensor(num_items, device=batch["input_ids"].device)} if num_items else {}
    with torch.no_grad():
        return float(model(**batch, **kwargs, use_cache=False).loss.double())  # as in training: no KV cache


def ga_check(model, samples: list[dict], pad_id: int, ga: int, tol: float) -> Finding:
    device = next(model.parameters()).device
    full = _batch(samples, pad_id, device)
    total = _targets(full["labels"])
    one = _loss(model, full)
    size = max(1, len(samples) // ga)
    micro = [samples[i:i + size] for i in range(0, len(samples), size)]
    exact = sum(_loss(model, _batch(m, pad_id, device), total) for m in micro)
    naive = sum(_loss(model, _batch(m, pad_id, device)) for m in micro) / len(micro)
    diff = abs(exact - one) / max(abs(one), 1e-12)
    naive_off = abs(naive - one) / max(abs(one), 1e-12)
    detail = (f"one batch of {len(samples)}: {one:.6f}; {len(micro)} micro-batches with per-token sums / "
              f"{total} tokens: {exact:.6f} (relative difference {diff:.1e}); the naive mean of micro-batch "
              f"means would be {naive:.6f} ({naive_off:.1%} off)")
    if diff > tol:
        return _finding("numerics-ga", "error", "gradient accumulation is not exact: " + detail)
    return _finding("numerics-ga", "info", "gradient accumulation is exact: " + detail)


def packing_check(model, samples: list[dict], pad_id: int, tol: float, packing_on: bool) -> Finding:
    device = next(model.parameters()).device
    unpacked = _loss(model, _batch(samples, pad_id, device))
    ids, labels, positions = [], [], []
    for s in samples:
        ids += s["input_ids"]
        lab = list(s["labels"])
        lab[0] = IGNORE  # the first token of a sample is never predicted from the previous sample
        labels += lab
        positions += list(range(len(s["input_ids"])))
    packed = {"input_ids": torch.tensor([ids], device=device), "labels": torch.tensor([labels], device=device),
              "position_ids": torch.tensor([positions], device=device)}
    impl = getattr(model.config, "_attn_implementation", "?")
    row = dict(packed)
    packed = packing.PaddingFreePacking(lambda _examples: row)(None)  # what the SFT stage hands the model
    try:
        got = _loss(model, packed)
    except Exception as err:  # noqa: BLE001
        return _finding("numerics-packing", "error" if packing_on else "warning",
                        f"the model cannot run packed sequences ({type(err).__name__}: {err})")
    diff = abs(got - unpacked) / max(abs(unpacked), 1e-12)
    detail = f"padded batch {unpacked:.6f}, packed row {got:.6f} (relative difference {diff:.1e}, attention {impl})"
    if diff > tol:
        return _finding("numerics-packing", "error" if packing_on else "warning",
                        "packed and unpacked losses differ, so attention leaks across packed samples: " + detail)
    return _finding("numerics-packing", "info", "packed and unpacked losses agree: " + detail)


def kernels_check(model, samples: list[dict], pad_id: int, tol: float) -> Finding:
    try:  # imported here, not at the top: when it cannot be imported the check says so instead of failing
        from ftcli.engine import patch
    except Exception as err:  # noqa: BLE001
        return _finding("numerics-kernels", "info", f"not checked: ftcli.engine.patch is not available ({err})")
    device = next(model.parameters()).device
    batch = _batch(samples, pad_id, device)
    reference = _loss(model, batch)
    report = None
    try:
        report = patch.apply(model, "auto")
        patched = _loss(model, batch)
    except Exception as err:  # noqa: BLE001
        return _finding("numerics-kernels", "warning", f"not checked: patching failed ({type(err).__name__}: {err})")
    finally:
        if report is not None:
            patch.undo(report)
    replaced = sorted(getattr(report, "replaced", {}) or {})
    if not replaced:
        return _finding("numerics-kernels", "info", "not checked: ftcli.engine.patch replaced nothing on this architecture")
    diff = abs(patched - reference) / max(abs(reference), 1e-12)
    detail = (f"unpatched {reference:.6f}, patched ({', '.join(replaced)}; {getattr(report, 'impl', '?')}) "
              f"{patched:.6f}, relative difference {diff:.1e}")
    if diff > tol:
        return _finding("numerics-kernels", "error", "patched kernels change the loss: " + detail)
    return _finding("numerics-kernels", "info", "patched kernels match: " + detail)


def noise_tolerance(model, samples: list[dict], pad_id: int, floor: float) -> float:
    """The loss's own rounding noise: the same batch in reverse order, so low precision is not a finding."""
    device = next(model.parameters()).device
    a = _loss(model, _batch(samples, pad_id, device))
    b = _loss(model, _batch(samples[::-1], pad_id, device))
    return max(floor, 4 * abs(a - b) / max(abs(a), 1e-12))


def run(recipe_path: str | Path, overrides=(), n_samples: int = 4, ga: int = 2) -> Report:
    path = Path(recipe_path)
    if not (path.is_file() and path.suffix in (".yaml", ".yml")):
        raise BadInput(f"--numerics needs a recipe (.yaml), got {recipe_path}")
    recipe = recipe_mod.load(path, list(overrides))
    model, tokenizer = pretrained.load(recipe.model)
    template = templates.resolve(recipe.template.name, tokenizer)  # ChatTemplateError is a BadInput (exit 2)
    section = recipe.dataset.model_copy(update={"max_samples": max(n_samples * 4, 8), "skip_invalid": True})
    rows, fmt, _ = formats.read_rows(section)
    encoded = []
    for row in rows:
        if "messages" not in row and "text" not in row:
            if not (row.get("prompt") and row.get("chosen")):
                continue
            # a preference pair: the prompt and its chosen reply
            row = {"messages": as_messages(row["prompt"], "user") + as_messages(row["chosen"], "assistant")}
        enc = supervised.encode_sft_row(row, template, tokenizer, recipe.template.train_on, recipe.model.max_seq_length)
        if any(label != IGNORE for label in enc["labels"][1:]):
            encoded.append(enc)
        if len(encoded) == n_samples:
            break
    if len(encoded) < 2:
        raise BadInput(f"{recipe.dataset.path}: --numerics needs at least 2 {fmt} rows with trained tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = next(model.parameters()).dtype
    model.train()  # as in training (kernels such as the fused CE only take over with labels in training)
    tol = noise_tolerance(model, encoded, pad_id, 1e-4 if dtype == torch.float32 else 1e-3)
    findings = [ga_check(model, encoded, pad_id, ga, tol),
                packing_check(model, encoded, pad_id, tol, recipe.train.packing),
                kernels_check(model, encoded, pad_id, tol)]
    notes = [f"{len(encoded)} samples of {recipe.dataset.path}, {model.config.model_type} in {dtype}, "
             f"tolerance {tol:g}"]
    return Report(target=str(recipe_path), findings=findings, notes=notes)
