"""Write a Hugging Face model folder as a GGUF file that llama.cpp loads, on the `gguf` package.

Supported architectures (GGUF arch in brackets): Llama 3.x and Mistral [llama], Qwen2/2.5
[qwen2], Qwen3 [qwen3], Gemma 3 text [gemma3], Phi-3/3.5/4 [phi3]. The file is written in
two passes over the safetensors shards (shapes first, then one tensor at a time), so memory
holds one tensor, not the model.

Transforms llama.cpp expects:
* llama: q/k rows reordered from Hugging Face's rotate-half layout to llama.cpp's
  interleaved rope (per head: the two halves are interleaved);
* gemma3: every RMSNorm weight w becomes 1 + w (HF computes x * (1 + w), llama.cpp x * w);
* phi3: the fused qkv_proj / gate_up_proj are written fused, as llama.cpp reads them;
* tied embeddings: no output.weight, llama.cpp reuses token_embd;
* llama3 rope scaling: a `rope_freqs` tensor of per-frequency divisors; Phi LongRoPE:
  `rope_factors_long` / `rope_factors_short`.
1-D tensors, norms and biases stay F32; matrices take the requested type (f32/f16/bf16).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftcli.errors import BadInput, MissingPackage

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Phi3ForCausalLM": "phi3",
}
OUTTYPES = ("f32", "f16", "bf16")

# Hugging Face name (after the layer prefix) -> GGUF name, per architecture.
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_QK_NORM = {"self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
_LAYER_NAMES = {
    "llama": _LAYER,
    "qwen2": _LAYER,
    "qwen3": {**_LAYER, **_QK_NORM},
    "gemma3": {**_LAYER, **_QK_NORM,
               "post_attention_layernorm.weight": "post_attention_norm.weight",  # same HF name, other meaning
               "pre_feedforward_layernorm.weight": "ffn_norm.weight",
               "post_feedforward_layernorm.weight": "post_ffw_norm.weight"},
    "phi3": {"input_layernorm.weight": "attn_norm.weight",
             "self_attn.qkv_proj.weight": "attn_qkv.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"},
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
# Tensors a checkpoint may carry that are not model weights, or belong to a vision tower.
_SKIP = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias$|attention\.bias$|^vision_tower\.|^multi_modal_projector\."
                   r"|^model\.vision_tower\.|^model\.multi_modal_projector\.)")


@dataclass
class GgufResult:
    path: Path
    arch: str
    outtype: str
    tensors: int
    vocab_size: int
    tokenizer_model: str
    tokenizer_pre: str
    tied_embeddings: bool
    add_bos: bool = False
    padded_tokens: int = 0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- config
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


def detect_arch(config: dict) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    shown = ", ".join(names) or config.get("model_type", "unknown")
    raise BadInput(f"GGUF export does not support the architecture {shown}",
                   hint="supported: " + ", ".join(f"{k} (GGUF {v})" for k, v in ARCHITECTURES.items()))


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


# ----------------------------------------------------------------------------- hyperparameters
def _write_hparams(w, arch: str, config: dict, notes: list[str]) -> list[tuple[str, np.ndarray]]:
    """All {arch}.* keys; returns extra generated tensors (rope frequency factors)."""
    import gguf

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
    extra: list[tuple[str, np.ndarray]] = []
    kind = rope["rope_type"]

    if arch == "phi3":
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

    w.add_rope_dimension_count(hd)
    if arch == "llama":
        w.add_vocab_size(int(config["vocab_size"]))
        window = config.get("sliding_window")
        if window and window < config["max_position_embeddings"]:
            notes.append(f"sliding_window {window} is not represented in GGUF llama (llama.cpp attends to the "
                         "whole context); outputs differ beyond that many tokens")
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

    if arch == "gemma3":
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
    return extra


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


# ----------------------------------------------------------------------------- tensors
def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / f for f in files]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise BadInput(f"{model_dir} has no model.safetensors (or index): save the model with safe_serialization=True")


def _canonical(name: str) -> str:
    """Strip the multimodal wrappers so Gemma3ForConditionalGeneration maps like the text model."""
    name = name.replace("model.language_model.", "model.")
    if name.startswith("language_model.model."):
        name = name[len("language_model."):]
    if name.startswith("language_model.lm_head."):
        name = name[len("language_model."):]
    return name


def gguf_name(arch: str, hf_name: str) -> str | None:
    """GGUF tensor name for a Hugging Face tensor name (None: skip it)."""
    name = _canonical(hf_name)
    if _SKIP.search(name):
        return None
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
    if m and m.group(2) in _LAYER_NAMES[arch]:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[arch][m.group(2)]}"
    hint = "merge the adapter first (ftcli export does)" if "lora_" in name or "base_layer" in name else None
    raise BadInput(f"tensor {hf_name!r} has no GGUF {arch} equivalent", hint=hint)


def _is_f32(gguf: str, ndim: int) -> bool:
    return ndim <= 1 or gguf.endswith("norm.weight") or not gguf.endswith(".weight")


def _permute_rows(t, n_heads: int):
    """Rotate-half (HF) -> interleaved (llama.cpp) row order within each head."""
    rows = t.shape[0]
    return t.reshape(n_heads, 2, rows // n_heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def _transform(arch: str, gguf: str, t, config: dict):
    """The torch tensor llama.cpp expects for `gguf` (float32 where arithmetic is needed)."""
    import torch

    if arch == "llama" and (".attn_q." in gguf or ".attn_k." in gguf):
        heads = config["num_attention_heads"] if ".attn_q." in gguf else (
            config.get("num_key_value_heads") or config["num_attention_heads"])
        t = _permute_rows(t, heads)
    if arch == "gemma3" and gguf.endswith("norm.weight"):
        t = t.to(torch.float32) + 1.0
    return t


def _to_numpy(t, qtype: str) -> np.ndarray:
    import torch

    if qtype == "bf16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.to(torch.float16 if qtype == "f16" else torch.float32).contiguous().numpy()


STOP_KEY = "ftcli.chat.stop_tokens"  # our own keys (llama.cpp ignores unknown ones): what `ftcli chat` needs
TEMPLATE_NAME_KEY = "ftcli.chat.template_name"


def write_gguf(model_dir: Path, out_path: Path, outtype: str = "f16", *, chat_template: str | None = None,
               end_of_turn: str | None = None, stop_tokens: list[str] | None = None, template_name: str | None = None,
               name: str | None = None) -> GgufResult:
    """Convert `model_dir` to `out_path` (written to a temp name and renamed when complete).

    `chat_template` (the training template) goes to tokenizer.chat_template, its end-of-turn
    token to tokenizer.ggml.eot_token_id, and its stop strings to ftcli.chat.stop_tokens.
    """
    try:
        import gguf
    except ImportError:
        raise MissingPackage("gguf", "GGUF export", "pip install 'ftcli[export]'  (gguf==0.19.0)") from None
    import torch
    from safetensors import safe_open

    if outtype not in OUTTYPES:
        raise BadInput(f"GGUF base type {outtype!r} is not one of {', '.join(OUTTYPES)}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    config = read_config(model_dir)
    arch = detect_arch(config)
    notes: list[str] = []

    # Pass 1: names and shapes only.
    plan: list[tuple[str, Path, str, tuple]] = []  # (gguf name, shard, hf name, shape)
    for shard in _shards(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                target = gguf_name(arch, key)
                if target is not None:
                    plan.append((target, shard, key, tuple(f.get_slice(key).get_shape())))
    names = {p[0]: p for p in plan}
    if "token_embd.weight" not in names:
        raise BadInput(f"{model_dir} has no model.embed_tokens.weight")
    tied = "output.weight" not in names or (
        config.get("tie_word_embeddings", False) and _same_tensor(names["output.weight"], names["token_embd.weight"]))
    if arch == "gemma3" and not tied:
        raise BadInput("Gemma 3 in GGUF always ties lm_head to the embeddings, but this lm_head differs")
    if tied:
        plan = [p for p in plan if p[0] != "output.weight"]
    n_rows = names["token_embd.weight"][3][0]
    key = lambda p: (0, 0, "") if p[0] == "token_embd.weight" else (  # noqa: E731
        (2, 0, "") if p[0].startswith("output") else (1, int(p[0].split(".")[1]), p[0]))
    plan.sort(key=key)

    from ftcli.export.vocab import read_vocab

    vocab = read_vocab(model_dir, n_rows, end_of_turn)
    if vocab.padded:
        notes.append(f"{vocab.padded} embedding rows have no token; written as [PAD<i>] (unused)")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[_ARCH_ENUM(gguf, arch)])
    try:
        w.add_name(_safe_name(name or model_dir.name, vocab))
        w.add_type("model")
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        extra = _write_hparams(w, arch, config, notes)
        vocab.write(w, chat_template)
        if stop_tokens:
            w.add_array(STOP_KEY, list(stop_tokens))
        if template_name:
            w.add_string(TEMPLATE_NAME_KEY, template_name)

        entries = []  # (gguf name, source, qtype, shape)
        for target, arr in extra:
            entries.append((target, arr, "f32", arr.shape))
        for target, shard, hf, shape in plan:
            entries.append((target, (shard, hf), "f32" if _is_f32(target, len(shape)) else outtype, shape))
        raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
               "bf16": gguf.GGMLQuantizationType.BF16}
        for target, _, qtype, shape in entries:
            nbytes = int(np.prod(shape)) * (4 if qtype == "f32" else 2)
            w.add_tensor_info(target, shape, np.dtype(np.float32 if qtype == "f32" else np.float16), nbytes,
                              raw_dtype=raw[qtype])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        handles = {}
        try:
            for target, source, qtype, _ in entries:
                if isinstance(source, np.ndarray):
                    w.write_tensor_data(source.astype(np.float32))
                    continue
                shard, hf = source
                if shard not in handles:
                    handles[shard] = safe_open(str(shard), framework="pt").__enter__()
                with torch.no_grad():
                    t = _transform(arch, target, handles[shard].get_tensor(hf), config)
                w.write_tensor_data(_to_numpy(t, qtype))
        finally:
            for h in handles.values():
                h.__exit__(None, None, None)
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return GgufResult(path=out_path, arch=arch, outtype=outtype, tensors=len(entries), vocab_size=n_rows,
                      tokenizer_model=vocab.model, tokenizer_pre=vocab.pre, tied_embeddings=tied, add_bos=vocab.add_bos,
                      padded_tokens=vocab.padded, notes=notes)


def _ARCH_ENUM(gguf, arch: str):  # noqa: N802
    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
            "gemma3": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3}[arch]


def _same_tensor(a: tuple, b: tuple) -> bool:
    from safetensors import safe_open

    if a[3] != b[3]:
        return False
    with safe_open(str(a[1]), framework="pt") as fa, safe_open(str(b[1]), framework="pt") as fb:
        return bool((fa.get_tensor(a[2]) == fb.get_tensor(b[2])).all())


def _safe_name(name: str, vocab) -> str:
    """general.name, chosen so llama.cpp tokenizes like the Hugging Face tokenizer.

    llama.cpp keys a tokenizer quirk on the *name*: when it contains "phi3"/"phi-3", every
    special token strips the whitespace after it (as the released Phi-3 tokenizer's
    rstrip=True tokens do), and the Phi-3 tokens <unk>, <s>, </s>, <|endoftext|> must exist.
    So the name carries "phi3" exactly when the tokenizer behaves that way.
    """
    has_phi3 = re.search(r"(?i)phi-?3", name) is not None
    phi3_tokens = {"<unk>", "<s>", "</s>", "<|endoftext|>"} <= set(vocab.tokens)
    if has_phi3 and not (vocab.rstrip_special and phi3_tokens):
        return re.sub(r"(?i)phi-?3", "phi_3", name)
    if not has_phi3 and vocab.rstrip_special and phi3_tokens and vocab.model == "llama":
        return f"{name} (phi3)"
    return name
