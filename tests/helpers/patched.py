"""Tiny models of every builtin architecture (plus a Qwen2 with a sliding window), with or without LoRA, and
their loss and gradients: what the patch and window-attention tests compare."""

from __future__ import annotations

import copy
import functools

import torch

from ftcli.models.builtin import builtin_path
from helpers.numerics import rel_err


@functools.lru_cache(maxsize=None)
def base_model(name: str):
    from transformers import AutoModelForCausalLM

    if name == "qwen2":  # no builtin: a small config with Qwen2's q/k/v biases and a sliding window
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        config = Qwen2Config(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=300, max_position_embeddings=64,
                             use_sliding_window=True, sliding_window=6, max_window_layers=1)
        return Qwen2ForCausalLM(config).float()
    return AutoModelForCausalLM.from_pretrained(builtin_path(f"builtin:{name}"), dtype=torch.float32)


def tiny_model(name: str, lora: bool = True, dropout: float = 0.0, softcap: float | None = None):
    model = copy.deepcopy(base_model(name))
    if softcap is not None:
        model.config.final_logit_softcapping = softcap
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # lora_A's initialisation
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would hide half of the LoRA path
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def batch_for(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size if hasattr(model, "config") else 1000
    ids = torch.randint(0, vocab, (2, 11), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[1, 8:] = -100  # padding
    return ids, labels


def loss_and_grads(model, ids, labels, **kw):
    model.train()
    model.zero_grad()
    loss = model(input_ids=ids, labels=labels, **kw).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(a, b, tol):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert rel_err(loss_b, loss_a) <= tol, (loss_a, loss_b)
    worst = max(rel_err(grads_b[k], grads_a[k]) for k in grads_a)
    assert worst <= tol, worst
