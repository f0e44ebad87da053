"""A small Llama-shaped model with real trained weights, for measuring quantization quality (issue 17).

Random-init weights say nothing about how a quant hurts a model, so this trains one from scratch, seeded, on text
that every machine has offline: the Python standard library's own sources. The tokenizer is Phi-3-mini's real
32,011-token SentencePiece BPE (../shared/fixtures/real-world/tokenizers/phi-3-mini-4k-instruct, carried to the GPU
machine; Llama-2's fixture does not load in current `tokenizers`).

  train (GPU, about 2 minutes):  python3 make_realtext_model.py train --tokenizer DIR --out $OUT
      writes model-0000N.safetensors (bf16, <= 15 MB each, so they come back from the GPU machine),
      meta.json (config, seed, losses) and heldout.txt (files that training never saw)
  restore (CPU, here):           python3 make_realtext_model.py restore --tokenizer DIR --from DIR --to MODEL_DIR
      rebuilds a Hugging Face model folder from those files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

SHAPE = dict(hidden_size=512, intermediate_size=1280, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
             rms_norm_eps=1e-5, vocab_size=32064, bos_token_id=1, eos_token_id=32000)  # 512/1280 are 256-multiples
SEED = 0


def is_heldout(path: Path) -> bool:
    """One stdlib file in 16, by a hash of its name: the same split on every machine."""
    return hashlib.sha256(path.name.encode()).digest()[0] % 16 == 0


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "idlelib", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


def train(tokenizer_dir: Path, out: Path, seconds: float, seq: int, batch: int, steps_planned: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    files = stdlib_files()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    train_texts = [t for p, t in zip(files, texts) if not is_heldout(p)]
    heldout = "\n\n".join(t for p, t in zip(files, texts) if is_heldout(p))
    (out / "heldout.txt").write_text(heldout[:2_000_000], encoding="utf-8")
    t0 = time.time()
    ids = [i for enc in tok(train_texts, add_special_tokens=False)["input_ids"] for i in [1, *enc, 32000]]
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    print(f"{len(train_texts)} training files, {data.numel():,} tokens in {data.shape[0]} rows "
          f"(tokenized in {time.time() - t0:.0f} s); {len(files) - len(train_texts)} files held out", flush=True)
    config = LlamaConfig(**SHAPE)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(config).to(device, torch.bfloat16 if device == "cuda" else torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    data = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(SEED))].to(device)
    warmup, losses, step, start = min(100, steps_planned // 10), [], 0, time.time()
    while time.time() - start < seconds and step < steps_planned:
        progress = max(step / steps_planned, (time.time() - start) / seconds)  # whichever budget ends first
        lr = 1.5e-3 * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = max(lr, 1.5e-4)
        rows = data[(step * batch) % (data.shape[0] - batch):][:batch]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0:
            losses.append([step, round(loss.item(), 4)])
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f} s", flush=True)
        step += 1
    from safetensors.torch import save_file

    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        parts = max(1, math.ceil(tensor.numel() * 2 / 14_000_000))  # files back from the GPU machine are <= 16 MB
        for k, piece in enumerate(tensor.chunk(parts, dim=0)):
            state[f"{name}#{k}" if parts > 1 else name] = piece.to(torch.bfloat16).contiguous().cpu()
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        if current and size + tensor.numel() * tensor.element_size() > 15_000_000:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + tensor.numel() * tensor.element_size()
    shards.append(current)
    for n, shard in enumerate(shards):
        save_file(shard, str(out / f"model-{n:05d}.safetensors"))
    meta = dict(config=config.to_dict(), seed=SEED, seq=seq, batch=batch, steps=step, tokens_seen=step * batch * seq,
                train_seconds=round(time.time() - start, 1), losses=losses, final_loss=round(loss.item(), 4),
                gpu=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"trained {step} steps in {meta['train_seconds']} s, final loss {meta['final_loss']}", flush=True)


def restore(tokenizer_dir: Path, source: Path, target: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    meta = json.loads((source / "meta.json").read_text())
    config = LlamaConfig(**{k: v for k, v in meta["config"].items() if k in SHAPE or k == "torch_dtype"})
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    pieces = {}
    for shard in sorted(source.glob("model-*.safetensors")):
        pieces.update(load_file(str(shard)))
    state = {name: tensor for name, tensor in pieces.items() if "#" not in name}
    for name in {n.split("#")[0] for n in pieces if "#" in n}:
        count = sum(n.startswith(name + "#") for n in pieces)
        state[name] = torch.cat([pieces[f"{name}#{k}"] for k in range(count)])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, target / name)
    print(f"restored {target} ({meta['steps']} steps, final loss {meta['final_loss']})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "restore"])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from", dest="source", type=Path)
    parser.add_argument("--to", type=Path)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1800, help="planned steps: the cosine schedule's length")
    a = parser.parse_args()
    train(a.tokenizer, a.out, a.seconds, a.seq, a.batch, a.steps) if a.action == "train" else restore(a.tokenizer, a.source, a.to)
