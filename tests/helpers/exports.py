"""Helpers for the export tests: fake run directories and tiny models of the other supported shapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from ftcli.models import builtin
from ftcli.data import templates

FAMILY = {"tiny-llama3": "llama3", "tiny-gemma3": "gemma3", "tiny-qwen3": "qwen3", "tiny-phi3": "phi3",
          "tiny-mistral": "mistral"}


def builtin_dir(name: str) -> Path:
    return builtin.builtin_path(f"builtin:{name}")


def template_of(name: str):
    return templates.load_family(FAMILY[name])


def write_manifest(root: Path, name: str, **model) -> None:
    data = {"model": {"name": f"builtin:{name}", "dtype": "float32", "load_in_4bit": False, **model},
            "template": {"name": FAMILY[name]}, "dataset": {"system_prompt": None},
            "export": {"formats": [], "gguf_quant": ["q8_0"]}, "_run": {"status": "done"}}
    (root / "recipe.resolved.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")


def random_lora(model, seed: int = 0, r: int = 4):
    """A LoRA on every linear layer with non-zero B, so merging changes the model."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model


def make_lora_run(root: Path, name: str = "tiny-llama3", seed: int = 0) -> Path:
    """A run directory as `ftcli train` leaves it for LoRA: adapter/ (with the training template) and the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(builtin_dir(name), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(builtin_dir(name))
    random_lora(model, seed).save_pretrained(root / "adapter")
    tokenizer.chat_template = template_of(name).source
    tokenizer.save_pretrained(root / "adapter")
    write_manifest(root, name)
    return root


def make_full_run(root: Path, name: str = "tiny-mistral") -> Path:
    """A full-finetune run directory: model/ is a complete HF folder."""
    from transformers import AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(builtin_dir(name), root / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.chat_template = template_of(name).source
    tokenizer.save_pretrained(root / "model")
    write_manifest(root, name)
    return root


def _randomize(model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if p.dim() == 1 and "norm" in n else noise * (0.1 if p.dim() == 1 else 0.05))


def other_shape(kind: str, out: Path) -> Path:
    """Tiny models of supported shapes no builtin covers: Qwen2 (q/k/v biases), Phi-4-mini
    (partial rotary, LongRoPE, tied), Llama with linear rope scaling (untied)."""
    import transformers
    from transformers import AutoTokenizer

    if kind == "qwen2":
        tokenizer = AutoTokenizer.from_pretrained(builtin_dir("tiny-qwen3"))
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
            max_position_embeddings=4096))
    elif kind == "phi4-mini":
        tokenizer = AutoTokenizer.from_pretrained(builtin_dir("tiny-qwen3"))
        model = transformers.Phi3ForCausalLM(transformers.Phi3Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=8192,
            original_max_position_embeddings=1024, partial_rotary_factor=0.75, pad_token_id=0, bos_token_id=0,
            eos_token_id=0, rope_scaling={"type": "longrope", "long_factor": [1.0 + 0.1 * i for i in range(6)],
                                          "short_factor": [1.0 + 0.05 * i for i in range(6)]}))
    elif kind == "llama-linear-rope":
        tokenizer = AutoTokenizer.from_pretrained(builtin_dir("tiny-llama3"))
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0},
            rope_theta=10000.0, tie_word_embeddings=False))
    else:
        raise ValueError(kind)
    _randomize(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def wide_llama(out: Path, tied: bool = False, layers: int = 4, seed: int = 0) -> Path:
    """A Llama of k-quant width (hidden 512, ffn 1024: rows divide into 256-value blocks) with the
    tiny-llama3 tokenizer and seeded random weights, for the quantisation tests."""
    import transformers
    from transformers import AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(builtin_dir("tiny-llama3"))
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=tied, rope_theta=10000.0,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    _randomize(model, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


SAMPLE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: What is 12 plus 7? Answer: 19.",
                "def add(a, b):\n    return a + b\n", "Paris is in France, Berlin is in Germany."]
