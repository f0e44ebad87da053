"""Train a small Llama-shaped model from scratch on real text, for measuring quantisation quality (#17).

Random-init weights say nothing about quantisation; this gives trained ones in a few minutes on one
GPU. Seeded. The text is the Python standard library's own sources (offline on every machine),
split by file: 95% of the files train, the rest are held out and written to $OUT/heldout.jsonl.gz
(one {"text": ...} per row) for the calibration and quality rows of the export, which never saw
them in training. The tokenizer is a real 32k one (Phi-3-mini's SentencePiece-style BPE, from
shared/fixtures/real-world/tokenizers, copied next to this script by run.sh).

Size: hidden 512, 4 layers, 8 heads / 2 KV heads, FFN 1536 (every row divides into 256-value
k-quant blocks), tied embeddings: 28.5M parameters, 57 MB in bf16. The weights come back as one
model.safetensors cut into 15 MB parts (cat them back together; sha256 in SHA256SUMS).

    python make_realtext_model.py --out $OUT [--steps 3000] [--seconds 270]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sysconfig
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent


def stdlib_texts() -> list[tuple[str, str]]:
    """(relative path, text) of every .py file of the standard library, sorted (site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        if "site-packages" in rel or "dist-packages" in rel or rel.startswith(("test/", "idlelib/", "lib2to3/tests")):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 200 <= len(text) <= 400_000:
            out.append((rel, text))
    return out


def chunks(text: str, size: int = 2000) -> list[str]:
    """Rows of about `size` characters, cut at line ends."""
    rows, cur = [], []
    n = 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            rows.append("".join(cur))
            cur, n = [], 0
    if n > 200:
        rows.append("".join(cur))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=240.0, help="stop early past this much training time")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--max-files", type=int, default=0, help="smoke test: use only this many files")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    torch.manual_seed(0)
    started = time.time()

    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    files = stdlib_texts()
    if args.max_files:
        files = files[: args.max_files]
    device = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: only for a smoke test of the script
    order = list(range(len(files)))
    random.Random(0).shuffle(order)
    n_held = max(20, len(files) // 20)
    held = [files[i] for i in sorted(order[:n_held])]
    train = [files[i] for i in sorted(order[n_held:])]
    with gzip.open(args.out / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
        for rel, text in held:
            for row in chunks(text):
                f.write(json.dumps({"text": row, "file": rel}) + "\n")

    ids: list[int] = []
    for row in tokenizer([text for _, text in train], add_special_tokens=False)["input_ids"]:  # batched: parallel
        ids.extend(row)
        ids.append(tokenizer.eos_token_id)
    data = torch.tensor(ids, dtype=torch.long)
    print(f"{len(train)} training files, {len(held)} held out; {len(data) / 1e6:.1f}M training tokens; "
          f"tokenized in {time.time() - started:.0f}s", flush=True)

    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = transformers.LlamaForCausalLM(config).to(device)
    model.config.use_cache = False
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    gen = torch.Generator().manual_seed(0)
    t0, step, loss = time.time(), 0, torch.tensor(0.0)
    model.train()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s:s + args.seq + 1] for s in starts]).to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].contiguous()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0 or step == 1:
            print(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > args.seconds:
            print(f"stopping at step {step}: {args.seconds:.0f}s of training", flush=True)
            break

    model.eval()
    held_ids = []
    for _, text in held[:40]:
        held_ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        seqs = torch.tensor(held_ids[: (len(held_ids) // args.seq) * args.seq][: 64 * args.seq]).view(-1, args.seq).to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            held_loss = sum(model(input_ids=s[None], labels=s[None]).loss.item() for s in seqs) / len(seqs)
    summary = {"steps": step, "train_loss": round(loss.item(), 4), "heldout_loss": round(held_loss, 4),
               "heldout_ppl": round(math.exp(held_loss), 2), "train_seconds": round(time.time() - t0, 1),
               "train_tokens": len(data), "seen_tokens": step * args.batch * args.seq,
               "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
               "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    print(json.dumps(summary), flush=True)
    (args.out / "train-summary.json").write_text(json.dumps(summary, indent=2))
    model.to(torch.bfloat16).save_pretrained(args.out / "model", max_shard_size="200MB")
    config_path = args.out / "model" / "config.json"
    print("saved", sorted(p.name for p in (args.out / "model").iterdir()), config_path.stat().st_size, flush=True)


if __name__ == "__main__":
    main()
