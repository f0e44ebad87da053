"""Hugging Face -> GGUF tensors: the supported architectures, the tensor names, and the per-tensor transforms.

Supported architectures (GGUF arch in brackets): Llama 3.x and Mistral [llama], Qwen2/2.5
[qwen2], Qwen3 [qwen3], Gemma 3 text [gemma3], Phi-3/3.5/4 [phi3].

Transforms llama.cpp expects:
* llama: q/k rows reordered from Hugging Face's rotate-half layout to llama.cpp's
  interleaved rope (per head: the two halves are interleaved);
* gemma3: every RMSNorm weight w becomes 1 + w (HF computes x * (1 + w), llama.cpp x * w);
* phi3: the fused qkv_proj / gate_up_proj are written fused, as llama.cpp reads them.
1-D tensors, norms and biases stay F32; matrices take the requested type (f32/f16/bf16).
"""

from __future__ import annotations

import re

import numpy as np

from ftcli.errors import BadInput

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Phi3ForCausalLM": "phi3",
}

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


def detect_arch(config: dict) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    shown = ", ".join(names) or config.get("model_type", "unknown")
    raise BadInput(f"GGUF export does not support the architecture {shown}",
                   hint="supported: " + ", ".join(f"{k} (GGUF {v})" for k, v in ARCHITECTURES.items()))


def arch_enum(gguf, arch: str):
    """The `gguf` package's MODEL_ARCH member for a GGUF arch name (`gguf`: the imported package)."""
    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
            "gemma3": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3}[arch]


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


def is_f32(gguf: str, ndim: int) -> bool:
    return ndim <= 1 or gguf.endswith("norm.weight") or not gguf.endswith(".weight")


def permute_rows(t, n_heads: int):
    """Rotate-half (HF) -> interleaved (llama.cpp) row order within each head."""
    rows = t.shape[0]
    return t.reshape(n_heads, 2, rows // n_heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def qk_heads(gguf: str, config: dict) -> int:
    """The number of heads whose rows a llama attn_q / attn_k tensor holds."""
    return config["num_attention_heads"] if ".attn_q." in gguf else (
        config.get("num_key_value_heads") or config["num_attention_heads"])


def transform(arch: str, gguf: str, t, config: dict):
    """The torch tensor llama.cpp expects for `gguf` (float32 where arithmetic is needed)."""
    import torch

    if arch == "llama" and (".attn_q." in gguf or ".attn_k." in gguf):
        t = permute_rows(t, qk_heads(gguf, config))
    if arch == "gemma3" and gguf.endswith("norm.weight"):
        t = t.to(torch.float32) + 1.0
    return t


def to_numpy(t, qtype: str) -> np.ndarray:
    import torch

    if qtype == "bf16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.to(torch.float16 if qtype == "f16" else torch.float32).contiguous().numpy()
