"""config.json as the GGUF writer reads it, and the {arch}.* hyperparameter keys written from it.

Rope scaling: llama3 becomes a `rope_freqs` tensor of per-frequency divisors, Phi LongRoPE
the `rope_factors_long` / `rope_factors_short` tensors; linear and yarn are GGUF keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ftcli.errors import BadInput


def read_config(model_dir: Path) -> dict:
    """config.json with `text_config` merged into the root and both rope styles normalised.

    Adds `_rope` (rope_type, theta and the scaling fields of the global layers) and, for
    Gemma 3, `_rope_local_theta` for the sliding layers.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise BadInput(f"{model_dir} has no config.json: not a Hugging Face model folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    text = config.get("text_config")
    if isinstance(text, dict):
        config = {**config, **text, "architectures": config.get("architectures")}
    rope = config.get("rope_parameters") or {}
    if "full_attention" in rope:  # Gemma 3 in transformers 5: one rope per layer type
        config["_rope_local_theta"] = (rope.get("sliding_attention") or {}).get("rope_theta", 10000.0)
        rope = rope["full_attention"]
    else:
        config["_rope_local_theta"] = config.get("rope_local_base_freq", 10000.0)
    if not rope:  # transformers 4 style
        rope = dict(config.get("rope_scaling") or {})
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope["type"]
    rope = dict(rope)
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    config["_rope"] = rope
    return config


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def write_hparams(w, arch: str, config: dict, notes: list[str]) -> list[tuple[str, np.ndarray]]:
    """All {arch}.* keys; returns extra generated tensors (rope frequency factors)."""
    hd = _write_common(w, config)
    if arch == "phi3":
        return _write_phi3_rope(w, config, hd)
    w.add_rope_dimension_count(hd)
    if arch == "llama":
        w.add_vocab_size(int(config["vocab_size"]))
        window = config.get("sliding_window")
        if window and window < config["max_position_embeddings"]:
            notes.append(f"sliding_window {window} is not represented in GGUF llama (llama.cpp attends to the "
                         "whole context); outputs differ beyond that many tokens")
    extra = _write_rope_scaling(w, config)
    if arch == "gemma3":
        _write_gemma3(w, config, hd)
    return extra


def _write_common(w, config: dict) -> int:
    """The keys every architecture has; returns the head dimension."""
    rope = config["_rope"]
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    hd = head_dim(config)
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_key_length(hd)
    w.add_value_length(hd)
    return hd


def _write_phi3_rope(w, config: dict, hd: int) -> list[tuple[str, np.ndarray]]:
    """phi3: partial rotary dimension, sliding window, and LongRoPE factors as tensors."""
    rope = config["_rope"]
    kind = rope["rope_type"]
    extra: list[tuple[str, np.ndarray]] = []
    rot = int(hd * float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))))
    w.add_rope_dimension_count(rot)
    orig = config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings") \
        or config["max_position_embeddings"]
    w.add_rope_scaling_orig_ctx_len(int(orig))
    w.add_sliding_window(int(config.get("sliding_window") or 0))
    if kind in ("longrope", "su"):
        long, short = rope.get("long_factor"), rope.get("short_factor")
        if not long or not short or len(long) != rot // 2 or len(short) != rot // 2:
            raise BadInput("phi3 LongRoPE config needs long_factor and short_factor of length rotary_dim/2")
        extra += [("rope_factors_long.weight", np.asarray(long, dtype=np.float32)),
                  ("rope_factors_short.weight", np.asarray(short, dtype=np.float32))]
        scale = config["max_position_embeddings"] / orig
        attn = rope.get("attention_factor") or (
            1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig)))
        w.add_rope_scaling_attn_factors(float(attn))
    elif kind != "default":
        raise BadInput(f"phi3 rope_type {kind!r} is not supported for GGUF export (default, longrope)")
    return extra


def _write_rope_scaling(w, config: dict) -> list[tuple[str, np.ndarray]]:
    """llama3 (a rope_freqs tensor), linear or yarn rope scaling of the non-phi3 architectures."""
    import gguf

    rope = config["_rope"]
    kind = rope["rope_type"]
    extra: list[tuple[str, np.ndarray]] = []
    if kind == "llama3":
        extra.append(("rope_freqs.weight", _llama3_rope_factors(config)))
    elif kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings")
                                            or config["max_position_embeddings"] / rope["factor"]))
    elif kind != "default":
        raise BadInput(f"rope_type {kind!r} is not supported for GGUF export (default, llama3, linear, yarn)")
    return extra


def _write_gemma3(w, config: dict, hd: int) -> None:
    """gemma3: softcapping, the sliding-window layers and their rope base, the attention scale."""
    n_head = config["num_attention_heads"]
    if config.get("attn_logit_softcapping"):
        raise BadInput("Gemma 3 with attn_logit_softcapping cannot be represented in GGUF gemma3")
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    w.add_sliding_window(int(config["sliding_window"]))
    w.add_rope_freq_base_swa(float(config["_rope_local_theta"]))
    types = config.get("layer_types")
    if not types:
        pattern = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6)
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                 for i in range(config["num_hidden_layers"])]
    w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    # llama.cpp scales scores by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 62-layer 27B).
    expected = config["hidden_size"] // n_head if config["num_hidden_layers"] == 62 else hd
    scalar = config.get("query_pre_attn_scalar", hd)
    if scalar != expected:
        raise BadInput(f"Gemma 3 query_pre_attn_scalar={scalar} cannot be represented in GGUF gemma3 "
                       f"(llama.cpp uses {expected})")


def _llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-frequency divisors: default inverse frequencies over the llama3-scaled ones."""
    rope = config["_rope"]
    hd = head_dim(config)
    base = float(rope["rope_theta"])
    inv = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_ctx = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    smooth = (old_ctx / wavelen - low) / (high - low)
    scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
    medium = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    scaled = np.where(medium, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return (inv / scaled).astype(np.float32)
