"""A PEFT LoRA adapter as a GGUF LoRA file that llama.cpp applies at load time
(`llama-cli -m base.gguf --lora adapter.gguf`, `Llama(model_path, lora_path=...)`).

Tensors are `<base tensor>.lora_a` ([r, in]) and `<base tensor>.lora_b` ([out, r]) for every
adapted linear layer; llama.cpp scales B·A by adapter.lora.alpha / r. The same transforms as
for the base weights apply where they touch output rows (llama q/k: B's rows are permuted).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ftcli.errors import BadInput
from ftcli.export import gguf_tensors
from ftcli.export.gguf_hparams import read_config


def write_lora_gguf(adapter_dir: Path, base_model_dir: Path, out_path: Path, name: str | None = None) -> dict:
    """Convert `adapter_dir` (adapter_config.json + adapter_model.safetensors) for the base in `base_model_dir`."""
    import gguf

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    r, alpha = _rank_and_alpha(adapter_dir)
    config = read_config(base_model_dir)
    arch = gguf_tensors.detect_arch(config)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise BadInput(f"{adapter_dir} has no adapter_model.safetensors")
    pairs = _pairs(weights, arch)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf_tensors.arch_enum(gguf, arch)])
    try:
        writer.add_name(name or adapter_dir.name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        _add_tensors(writer, weights, pairs, arch, config)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"file": out_path.name, "arch": arch, "rank": r, "alpha": alpha, "adapted_tensors": len(pairs)}


def _rank_and_alpha(adapter_dir: Path) -> tuple[int, float]:
    """r and the alpha llama.cpp needs, from adapter_config.json; adapters llama.cpp cannot apply are refused."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise BadInput(f"adapter type {cfg.get('peft_type')} cannot be written as a llama.cpp LoRA GGUF")
    if cfg.get("use_dora"):
        raise BadInput("a DoRA adapter cannot be applied by llama.cpp", hint="export the merged model instead (--gguf)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise BadInput("per-layer rank_pattern/alpha_pattern cannot be written as one GGUF LoRA alpha")
    if cfg.get("modules_to_save"):
        raise BadInput(f"the adapter also trains whole modules ({cfg['modules_to_save']}), which a LoRA GGUF "
                       "cannot carry", hint="export the merged model instead (--gguf)")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):  # peft scales by alpha/sqrt(r); llama.cpp by alpha/r
        alpha = alpha * math.sqrt(r)
    return r, alpha


def _pairs(weights: Path, arch: str) -> dict[str, dict[str, str]]:
    """GGUF base tensor name -> {"a": adapter key of lora_A, "b": adapter key of lora_B}."""
    from safetensors import safe_open

    pairs: dict[str, dict[str, str]] = {}
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
    for key in keys:
        if ".lora_A." not in key and ".lora_B." not in key:
            raise BadInput(f"adapter tensor {key!r} is not a LoRA A/B matrix and cannot go into a LoRA GGUF")
        side = "a" if ".lora_A." in key else "b"
        module = key.split(".lora_")[0].removeprefix("base_model.model.")
        target = gguf_tensors.gguf_name(arch, module + ".weight")
        if target is None:
            raise BadInput(f"adapter tensor {key!r} adapts a module the GGUF does not have")
        pairs.setdefault(target, {})[side] = key
    return pairs


def _add_tensors(writer, weights: Path, pairs: dict[str, dict[str, str]], arch: str, config: dict) -> None:
    """`<target>.lora_a` and `<target>.lora_b` in float32, B's rows permuted like the base's llama q/k."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for target in sorted(pairs, key=_order):
            if set(pairs[target]) != {"a", "b"}:
                raise BadInput(f"the adapter has only one of lora_A/lora_B for {target}")
            a = f.get_tensor(pairs[target]["a"]).float()
            b = f.get_tensor(pairs[target]["b"]).float()
            if arch == "llama" and (".attn_q." in target or ".attn_k." in target):
                b = gguf_tensors.permute_rows(b, gguf_tensors.qk_heads(target, config))
            writer.add_tensor(f"{target}.lora_a", a.contiguous().numpy().astype(np.float32))
            writer.add_tensor(f"{target}.lora_b", b.contiguous().numpy().astype(np.float32))


def _order(name: str):
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blk" else (-1, name)


def base_model_folder(name: str) -> Path:
    """A local folder for the base model: a path, a builtin, or a Hugging Face id from the local cache."""
    from ftcli.models.pretrained import resolve_name  # lazy: it loads torch

    resolved = resolve_name(name)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                            "*.jinja"]))
