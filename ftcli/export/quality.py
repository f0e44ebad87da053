"""The quality report of quantised GGUFs: each one against the 16-bit GGUF, in llama.cpp, on held-out rows.

Per file: KL(f16 ‖ quant) of the next-token distribution at every held-out position (mean,
p99, max), top-1 agreement, perplexity of the held-out text and its change from the f16
file, file size and bits per weight. The f16 log-probabilities are computed once and kept in
a memory-mapped scratch file, so memory holds one row's logits, not the whole set.
`export/quant-quality.png` plots mean KLD against file size for every quant of the run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

PLOT = "quant-quality.png"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _row_logprobs(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return _log_softmax(np.asarray(llm.scores[: len(ids)], dtype=np.float64))


def measure(base: Path, quants: dict[str, Path], rows: list[list[int]], progress=None) -> dict[str, dict]:
    """Figures for every file in `quants` (name -> path) against `base` on token `rows`."""
    from ftcli.export.imatrix import progress_iter
    from ftcli.export.verify import open_gguf

    n_ctx = max(64, max(len(r) for r in rows) + 8)
    offsets = np.cumsum([0] + [len(r) for r in rows])
    with tempfile.TemporaryDirectory(prefix="ftcli-quality-") as scratch:
        ref = None
        base_nll = np.zeros(int(offsets[-1]))
        with open_gguf(base, n_ctx=n_ctx) as llm:
            for k, ids in enumerate(progress_iter(rows, "quality: f16 reference", progress)):
                lp = _row_logprobs(llm, ids)
                if ref is None:
                    ref = np.lib.format.open_memmap(Path(scratch) / "ref.npy", mode="w+", dtype=np.float32,
                                                    shape=(int(offsets[-1]), lp.shape[1]))
                ref[offsets[k]:offsets[k + 1]] = lp
                stored = ref[offsets[k]:offsets[k + 1]].astype(np.float64)  # float32, as each quant's is compared
                base_nll[offsets[k]:offsets[k + 1] - 1] = -stored[np.arange(len(ids) - 1), ids[1:]]
        out = {}
        for name, path in quants.items():
            out[name] = _one(path, rows, offsets, ref, base_nll, n_ctx, progress, name)
    return out


def _one(path: Path, rows, offsets, ref, base_nll, n_ctx: int, progress, name: str) -> dict:
    from ftcli.export.imatrix import progress_iter
    from ftcli.export.verify import open_gguf

    kld, agree, nll = [], 0, []
    with open_gguf(path, n_ctx=n_ctx) as llm:
        for k, ids in enumerate(progress_iter(rows, f"quality: {name}", progress)):
            q = _row_logprobs(llm, ids).astype(np.float32).astype(np.float64)   # rounded as the reference is
            p = ref[offsets[k]:offsets[k + 1]].astype(np.float64)
            kld.append(np.maximum((np.exp(p) * (p - q)).sum(-1), 0.0))
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            nll.append(-q[np.arange(len(ids) - 1), ids[1:]])
    kld_all = np.concatenate(kld)
    mask = np.ones(len(base_nll), dtype=bool)
    mask[offsets[1:] - 1] = False            # the last position of a row predicts nothing
    ppl_base = float(np.exp(base_nll[mask].mean()))
    ppl = float(np.exp(np.concatenate(nll).mean()))
    size = Path(path).stat().st_size
    return {"kld_mean": _sig(kld_all.mean()), "kld_p99": _sig(np.percentile(kld_all, 99)),
            "kld_max": _sig(kld_all.max()), "top1_agreement": round(agree / len(kld_all), 4),
            "ppl": round(ppl, 4), "ppl_f16": round(ppl_base, 4), "ppl_change_pct": round(100 * (ppl / ppl_base - 1), 3),
            "bytes": size, "bits_per_weight": round(_bits_per_weight(path), 3), "tokens": int(len(kld_all)),
            "rows": len(rows)}


def _sig(x) -> float:
    return float(f"{float(x):.4g}")


def _bits_per_weight(path: Path) -> float:
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_weights = sum(int(t.n_elements) for t in reader.tensors)
    return 8.0 * n_bytes / max(1, n_weights)


def table_rows(figures: dict[str, dict]) -> list[list[str]]:
    """Rows of the printed table (header first): file, size, bpw, mean/p99/max KLD, top-1, ppl (Δ%)."""
    rows = [["quant", "size", "bpw", "KLD mean", "KLD p99", "KLD max", "top-1", "ppl", "Δppl"]]
    for name, f in sorted(figures.items(), key=lambda kv: kv[1]["bytes"]):
        rows.append([name, f"{f['bytes'] / 2**20:.2f}M", f"{f['bits_per_weight']:.2f}", f"{f['kld_mean']:.4g}",
                     f"{f['kld_p99']:.4g}", f"{f['kld_max']:.4g}", f"{f['top1_agreement']:.1%}", f"{f['ppl']:.3f}",
                     f"{f['ppl_change_pct']:+.2f}%"])
    return rows


def plot(figures: dict[str, dict], path: Path, title: str = "") -> Path:
    """Mean KLD against file size, one labelled point per quant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, f in figures.items():
        x, y = f["bytes"] / 2**20, max(f["kld_mean"], 1e-6)
        ax.scatter([x], [y], s=30, color="tab:red" if name.startswith("dynamic") else "tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence vs f16 (per token)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "quantisation quality on held-out rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
