"""What the quantised GGUFs of one export share: calibration rows, the importance matrix, the measured
sensitivities, and the quality report over all of them.

    rows (run data | --imatrix FILE.jsonl) -> held-out rows | calibration rows
    calibration rows -> imatrix.gguf (--imatrix, and always for dynamic presets)
                     -> sensitivity per tensor (dynamic presets, once per low type)
    held-out rows -> quality report of every quant against the 16-bit file (+ quant-quality.png)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftcli.errors import BadInput
from ftcli.export import calibration, quant_plan
from ftcli.export import quantize as q
from ftcli.export import verify

PLOT = "quant-quality.png"


@dataclass
class Shared:
    model_dir: Path
    base: quant_plan.BaseFile
    rows: calibration.Rows
    imatrix: dict | None = None                       # tensor -> per-column means
    report: dict = field(default_factory=dict)        # the export report's "calibration" section
    sensitivities: dict = field(default_factory=dict)


def prepare(model_dir: Path, tmp: Path, base_path: Path, quants: list[str], imatrix_spec: str | None,
            template, run_root: Path | None, log, calibration_tokens: int = calibration.CALIBRATION_TOKENS) -> Shared:
    """Rows and, when asked for (or a dynamic preset is), the imatrix saved as tmp/imatrix.gguf."""
    from transformers import AutoTokenizer

    from ftcli.export import imatrix as im

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dynamic = [x for x in quants if x in q.DYNAMIC]
    spec = imatrix_spec or ("auto" if dynamic else None)
    try:
        rows = calibration.load_rows(spec or "auto", run_root, tokenizer, template, calibration_tokens)
    except Exception as err:  # noqa: BLE001 (the run's data may be gone or offline: only needed when asked for)
        message = err.message if isinstance(err, BadInput) else f"{type(err).__name__}: {err}"
        if spec:
            hint = "export a run directory, or pass --imatrix FILE.jsonl (one {\"text\": ...} per line)"
            raise BadInput(f"no calibration rows: {message}", hint=hint) from None
        rows = _sample_rows(tokenizer, template)
        log(f"quality report on ftcli's sample texts ({message})")
    shared = Shared(model_dir=model_dir, base=quant_plan.read_base(base_path), rows=rows)
    shared.report = {"source": rows.source, "heldout_rows": len(rows.heldout), "heldout_tokens": rows.heldout_tokens,
                     "calibration_rows": len(rows.calibration), "calibration_tokens": rows.calibration_tokens}
    if spec:
        log(f"importance matrix on {rows.calibration_tokens} calibration tokens from {rows.source}")
        matrix = im.compute(model_dir, rows.calibration, source=rows.source)
        im.save(matrix, tmp / im.FILE)
        shared.imatrix = matrix.means()
        shared.report["imatrix"] = {"file": im.FILE, "tensors": len(matrix.sums), "chunks": matrix.chunks,
                                    "used_by": [x for x in quants if x not in q.BASE_TYPES and
                                                (imatrix_spec or x in q.DYNAMIC)]}
    return shared


def _sample_rows(tokenizer, template) -> calibration.Rows:
    """Held-out rows when there is no data: the verification's texts and chat (no calibration rows)."""
    from ftcli.data import templates

    texts = list(verify.PLAIN_TEXTS) + [templates.render(template, verify.conversation_for(template), tokenizer)]
    return calibration.Rows(heldout=[list(tokenizer(t)["input_ids"]) for t in texts],
                            source="ftcli sample texts (no run data)")


def plan_for(shared: Shared, quant: str, imatrix_asked: bool, log) -> tuple[dict[str, str], list[dict], dict]:
    """(plan, fallbacks, report extras) of one quant: llama.cpp's mix, or the measured dynamic choice."""
    from ftcli.export import dynamic

    if quant not in q.DYNAMIC:
        wanted = quant_plan.wanted_types(shared.base, quant, imatrix_asked)
        plan, fell = quant_plan.with_fallbacks(shared.base, wanted)
        return plan, fell, {}
    ref, types = dynamic.PRESETS[quant]
    if types[0] not in shared.sensitivities:
        log(f"measuring each tensor's sensitivity to {types[0]} on {min(shared.rows.calibration_tokens, dynamic.SENSITIVITY_TOKENS)}"
            " calibration tokens")
        shared.sensitivities[types[0]] = dynamic.measure(shared.model_dir, shared.base, shared.rows.calibration,
                                                         types[0], types, shared.imatrix)
    plan, section = dynamic.choose(shared.base, quant, shared.sensitivities[types[0]])
    wanted = {t.name: types[0] for t in shared.base.tensors if t.name in plan}
    fell = [f for f in quant_plan.with_fallbacks(shared.base, wanted)[1] if plan[f["tensor"]] == f["used"]]
    return plan, fell, {"dynamic": section}


def quality(shared: Shared, base_path: Path, files: dict[str, Path], out_png: Path, log) -> dict[str, dict]:
    """The quality figures of every file (the base file too: its KLD against itself is 0), and the plot."""
    from ftcli.export import quality as qr

    log(f"quality report: {len(files)} files against {base_path.name} on {shared.rows.heldout_tokens} held-out tokens")
    figures = qr.measure(base_path, files, shared.rows.heldout)
    qr.plot(figures, out_png, title=f"{len(files)} quants, {shared.rows.heldout_tokens} held-out tokens")
    return figures
