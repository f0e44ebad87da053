"""CPU part of the quantisation-quality bar (#17): the quants of the real-text model and their quality table.

    python docs/runs/2026-12-07-quants/quality_table.py GPU_OUT WORK [CALIBRATION_TOKENS]

GPU_OUT holds what run.sh brought back (model.safetensors.part-*, SHA256SUMS, config.json,
heldout.jsonl.gz). This rebuilds the model folder (tokenizer from the shared fixtures), makes a run
directory whose dataset is the held-out text (files the model never trained on), and runs

    ftcli export RUN --gguf f16,q4_k_m,dynamic-q4,dynamic-q2            (q4_k_m without imatrix)
    ftcli export RUN --gguf q4_k_m --imatrix auto --out RUN/export-imatrix

then prints one table (and writes WORK/quality-table.md) with the bars of the issue checked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO.parent / "shared" / "fixtures" / "real-world" / "tokenizers" / "phi-3-mini-4k-instruct"


def main(gpu_out: Path, work: Path, calibration_tokens: int = 32768) -> None:
    run = work / "run"
    model = run / "model"
    model.mkdir(parents=True, exist_ok=True)
    with open(model / "model.safetensors", "wb") as f:
        for part in sorted(gpu_out.glob("model.safetensors.part-*")):
            f.write(part.read_bytes())
    want = (gpu_out / "SHA256SUMS").read_text().split()[0]
    got = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    if got != want:
        sys.exit(f"model.safetensors does not match SHA256SUMS ({got} != {want})")
    shutil.copy(gpu_out / "config.json", model / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, model / name)
    data = work / "heldout.jsonl"
    with gzip.open(gpu_out / "heldout.jsonl.gz", "rt", encoding="utf-8") as src:
        data.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n" for line in src), encoding="utf-8")
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(model), "dtype": "bfloat16"}, "template": {"name": "auto"},
        "dataset": {"path": str(data), "format": "text", "eval_fraction": 0.0}, "train": {"seed": 0},
        "export": {"formats": [], "gguf_quant": []}, "_run": {"status": "done"}}))
    # --no-verify: the real Phi-3 tokenizer renders the chat template one "▁" apart in llama.cpp (after
    # <|system|>), which fails the export's chat-tokenisation gate. The quality figures do not depend on it:
    # the held-out rows are HF token ids, fed alike to the f16 file and every quant.
    ftcli = [sys.executable, "-m", "ftcli", "export", str(run), "--overwrite", "--no-verify", "--calibration-tokens",
             str(calibration_tokens)]
    subprocess.run(ftcli + ["--gguf", "f16,q4_k_m,dynamic-q4,dynamic-q2"], check=True)
    subprocess.run(ftcli + ["--gguf", "q4_k_m", "--imatrix", "auto", "--out", str(run / "export-imatrix")], check=True)

    figures = {}
    for folder, suffix in (("export", ""), ("export-imatrix", " --imatrix auto")):
        report = json.loads((run / folder / "export-report.json").read_text())
        for entry in report["files"]:
            if entry.get("quality") and not (suffix and entry["quant"] == "f16"):
                figures[entry["quant"] + suffix] = entry["quality"]
        cal = report["calibration"]
    lines = ["| quant | size (MB) | bpw | mean KLD | p99 KLD | max KLD | top-1 | ppl | Δppl |", "|---|---|---|---|---|---|---|---|---|"]
    for name, f in sorted(figures.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"| {name} | {f['bytes'] / 1e6:.2f} | {f['bits_per_weight']:.2f} | {f['kld_mean']:.4g} | "
                     f"{f['kld_p99']:.4g} | {f['kld_max']:.4g} | {f['top1_agreement']:.1%} | {f['ppl']:.3f} | "
                     f"{f['ppl_change_pct']:+.2f}% |")
    q4, q4i, d4, d2 = (figures[k] for k in ("q4_k_m", "q4_k_m --imatrix auto", "dynamic-q4", "dynamic-q2"))
    bars = [
        f"dynamic-q4 mean KLD / q4_k_m = {d4['kld_mean'] / q4['kld_mean']:.2f} (bar ≤ 0.70) at size "
        f"{d4['bytes'] / q4['bytes']:.3f}× (bar ≤ 1.03)",
        f"q4_k_m --imatrix auto mean KLD {q4i['kld_mean']:.4g} vs {q4['kld_mean']:.4g} without (bar: lower)",
        f"dynamic-q2 top-1 {d2['top1_agreement']:.1%} (bar ≥ 80%)",
        f"held-out: {cal['heldout_tokens']} tokens; imatrix/sensitivity on {cal['calibration_tokens']} other tokens",
    ]
    text = "\n".join(lines + [""] + [f"- {b}" for b in bars]) + "\n"
    (work / "quality-table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
