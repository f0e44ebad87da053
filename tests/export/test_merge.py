"""Merging: the merged model computes what base + adapter computes, for LoRA and for QLoRA,
and a QLoRA adapter is merged into the original 16-bit weights, never the 4-bit ones."""

import pytest
import torch

from ftcli.export.merge import merge_adapter
from helpers.exports import builtin_dir, random_lora

IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64, 8, 250]])


def _logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits.float()


def test_lora_merge_equals_base_plus_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(builtin_dir("tiny-qwen3"), dtype=torch.float32)
    random_lora(base, seed=1).save_pretrained(tmp_path / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(builtin_dir("tiny-qwen3"), dtype=torch.float32)
    with_adapter = _logits(PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")))
    merged = merge_adapter("builtin:tiny-qwen3", tmp_path / "adapter", torch.float32)
    plain = _logits(AutoModelForCausalLM.from_pretrained(builtin_dir("tiny-qwen3"), dtype=torch.float32))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (with_adapter - plain).abs().max() > 1e-2  # the adapter matters ...
    assert torch.allclose(_logits(merged), with_adapter, atol=1e-5)  # ... and merging keeps it exactly


def test_qlora_adapter_is_merged_into_the_original_16bit_weights(tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    name = "tiny-qwen3"
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    quantized = AutoModelForCausalLM.from_pretrained(builtin_dir(name), quantization_config=nf4,
                                                     dtype=torch.float32)
    adapter = random_lora(quantized, seed=2)  # trained (here: set) on the 4-bit base, as QLoRA does
    qlora_logits = _logits(adapter)
    adapter.save_pretrained(tmp_path / "adapter")

    merged = merge_adapter(f"builtin:{name}", tmp_path / "adapter", torch.float32)
    assert not any(getattr(m, "quant_state", None) is not None for m in merged.modules())
    base16 = AutoModelForCausalLM.from_pretrained(builtin_dir(name), dtype=torch.float32)
    expected = _logits(PeftModel.from_pretrained(base16, str(tmp_path / "adapter")))
    assert torch.allclose(_logits(merged), expected, atol=1e-5)  # base (16-bit) + adapter, exactly

    # The merged weight is W16 + scale * B @ A: no 4-bit rounding baked in.
    from safetensors.torch import load_file

    original = load_file(builtin_dir(name) / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    lora = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_{}.weight"
    delta = 2.0 * lora[key.format("B")] @ lora[key.format("A")]  # lora_alpha / r = 2
    merged_w = dict(merged.named_parameters())["model.layers.0.mlp.down_proj.weight"].detach()
    assert torch.allclose(merged_w, original + delta, atol=1e-6)
    # ... whereas the 4-bit model the adapter was trained on differs from it by the nf4 error.
    assert (qlora_logits - expected).abs().max() > 10 * (_logits(merged) - expected).abs().max()
