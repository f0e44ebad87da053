"""train.memory / train.gradient_checkpointing -> which layers recompute, and the plan applied to a model."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from ftcli.engine import checkpointing, memory, plan

GiB = memory.GiB
LLAMA_8B = memory.Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128,
                        vocab=128256, tied=False)
KW = dict(batch=4, seq=2048, lora_r=16, fused_kernels=True)


def train(memory_="lean", gc="auto", budget=None):
    return SimpleNamespace(memory=memory_, gradient_checkpointing=gc, memory_budget_gib=budget)


def test_lean_recomputes_every_layer_and_offloads_on_a_gpu_only():
    on_gpu = plan.decide(train(), LLAMA_8B, KW, on_gpu=True, gpu_bytes=141 * GiB)
    assert (on_gpu.recomputed, on_gpu.offload) == (32, True)
    on_cpu = plan.decide(train(), LLAMA_8B, KW, on_gpu=False, gpu_bytes=0)
    assert on_cpu.recomputed == 0  # no GPU memory to save


def test_explicit_gradient_checkpointing_overrides_the_preset():
    for gc, expected in [(True, (32, False)), (False, (0, False)), ("offload", (32, True))]:
        p = plan.decide(train("fast", gc), LLAMA_8B, KW, on_gpu=True, gpu_bytes=141 * GiB)
        assert (p.recomputed, p.offload) == expected, gc


def test_fast_keeps_as_many_layers_as_the_budget_allows():
    def fast(budget):
        return plan.decide(train("fast", budget=budget), LLAMA_8B, KW, on_gpu=True, gpu_bytes=141 * GiB)

    roomy, tight, capped = fast(None), fast(24.0), fast(31.3)
    assert roomy.recomputed == 0 and not roomy.offload  # 90% of 141 GiB holds every layer's activations
    assert 0 < capped.recomputed < tight.recomputed <= 32 and capped.offload
    for p, budget in [(tight, 24.0), (capped, 31.3)]:
        fits = memory.estimate(LLAMA_8B, **KW, recomputed_layers=p.recomputed, offload=True).total
        one_less = memory.estimate(LLAMA_8B, **KW, recomputed_layers=p.recomputed - 1, offload=True).total
        assert fits <= budget * GiB < one_less  # the fewest recomputed layers that fit
    assert fast(5.0).recomputed == 32  # nothing fits: recompute everything, the pre-flight check will say so


def test_offloaded_recompute_estimates_less_than_plain_recompute():
    plain = memory.estimate(LLAMA_8B, **KW)
    off = memory.estimate(LLAMA_8B, **KW, offload=True)
    saved = plain.activations - off.activations
    assert saved == pytest.approx(32 * 4 * 2048 * 4096 * 2)  # 32 layer inputs of 8192 tokens in bf16: 2 GiB


def test_minimal_splits_attention_and_mlp_where_the_layout_is_known():
    """memory: minimal splits layers into blocks; lean (the default) and fast recompute whole layers: on an H200
    the split cost 4-27% of the tokens/s (docs/benchmarks.md)."""
    from transformers import AutoConfig, MixtralConfig

    from ftcli.models.builtin import builtin_path

    qwen3 = memory.Shape.from_config(AutoConfig.from_pretrained(builtin_path("builtin:tiny-qwen3")))
    assert qwen3.splits_blocks and not memory.Shape.from_config(MixtralConfig()).splits_blocks
    split_8b = dataclasses.replace(LLAMA_8B, splits_blocks=True)
    minimal = plan.decide(train("minimal"), split_8b, KW, on_gpu=True, gpu_bytes=141 * GiB)
    assert (minimal.recomputed, minimal.offload, minimal.split) == (32, True, True)
    assert "attention and MLP recomputed separately" in minimal.describe()
    for preset in ("lean", "fast"):
        p = plan.decide(train(preset, budget=24.0), split_8b, KW, on_gpu=True, gpu_bytes=141 * GiB)
        assert p.offload and not p.split, preset
    assert not plan.decide(train("minimal", gc=True), split_8b, KW, on_gpu=True, gpu_bytes=141 * GiB).split
    assert not plan.decide(train("minimal"), LLAMA_8B, KW, on_gpu=True, gpu_bytes=141 * GiB).split
    fsdp = plan.decide(train("minimal"), split_8b, KW, on_gpu=True, gpu_bytes=141 * GiB, sharded=True)
    assert fsdp.offload and not fsdp.split  # FSDP reshards between the two blocks' backwards


def test_split_blocks_lower_the_recompute_peak_below_the_loss_head():
    """Llama-3.1-8B at 8192 tokens, bf16, per token: attention block 2(2h+3q+2kv) activations + 2(2q+2kv+h)
    gradients = 72 KiB; MLP block 2(2h+2i) + 2(2i+h) = 136 KiB, in two chunks 68 KiB. Whole layer recompute
    (the attention's activations wait through the MLP's backward, which with the fused LoRA MLP needs beside
    gate and up only dY, dX and a quarter of the product: 2(2h + i/4)) 44 + 72 + 23 = 139 KiB. Split, the loss
    head (final norm output and gradient, 1024 rows of logits and their gradient: 0.61 GiB) sets the peak."""
    whole = memory.estimate(LLAMA_8B, **KW, offload=True)
    split_8b = dataclasses.replace(LLAMA_8B, splits_blocks=True)
    split = memory.estimate(split_8b, **KW, offload=True, split=True)
    tokens, h, q, kv, i, vocab = 4 * 2048, 4096, 4096, 1024, 14336, 128256
    assert whole.working == pytest.approx(tokens * 2 * ((2 * h + 3 * q + 2 * kv) + (2 * h + 2 * i) + (2 * h + i / 4)))
    loss_head = 2 * tokens * h * 2 + 2 * 1024 * vocab * 2
    assert split.working == pytest.approx(loss_head)  # 1.09 GiB -> 0.61 GiB
    assert memory.token_chunks(memory.mlp_chunks_wanted(split_8b), tokens) == 2
    assert memory.token_chunks(2, 1536) == 1  # chunks of fewer than 1024 tokens are not worth their GEMMs
    kept = memory.estimate(dataclasses.replace(LLAMA_8B, splits_blocks=True), **KW, split=True)
    assert kept.working == memory.estimate(LLAMA_8B, **KW).working  # no offload, no split
    assert memory.estimate(LLAMA_8B, **KW, offload=True, split=True).working == whole.working  # unknown layout


def test_offloading_fits_the_host_memory_it_may_pin():
    """Llama-3.1-8B at 8192 tokens: each offloaded hidden state is 64 MiB, so 32 layers pin 2 GiB whole, 4 split."""
    split_8b = dataclasses.replace(LLAMA_8B, splits_blocks=True)

    def lean(host_gib):
        return plan.decide(train("minimal"), split_8b, KW, on_gpu=True, gpu_bytes=141 * GiB,
                                  host_bytes=None if host_gib is None else host_gib * GiB)

    assert (lean(None).offload, lean(None).split) == (True, True)
    assert (lean(4.5).offload, lean(4.5).split) == (True, True)
    roomy_for_one = lean(3.0)
    assert (roomy_for_one.offload, roomy_for_one.split) == (True, False)
    assert "split needs 4.0 GiB, 3.0 GiB of host memory to pin" in roomy_for_one.reason
    no_room = lean(1.0)
    assert (no_room.offload, no_room.split, no_room.recomputed) == (False, False, 32)
    assert "inputs stay on the GPU: offloading needs 2.0 GiB" in no_room.describe()
    assert plan.host_bytes_for_run() > 0  # read from /proc/meminfo on Linux


def _tiny_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).double()
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))


def _grads(model, ids):
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def test_apply_switches_checkpointing_on_for_the_first_layers_only_and_grads_are_unchanged():
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = _grads(_tiny_model(), ids)
    model = _tiny_model()
    two_of_four = plan.Plan(layers=4, recomputed=2, offload=False, reason="test")
    assert checkpointing.apply(model, two_of_four) == 2
    flags = [layer.gradient_checkpointing for layer in checkpointing.decoder_layers(model)]
    assert flags == [True, True, False, False]
    got = _grads(model, ids)
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-12, atol=1e-14, msg=name)


def test_no_kv_cache_in_training_even_when_nothing_recomputes():
    model = _tiny_model()
    assert model.config.use_cache
    assert checkpointing.apply(model, plan.Plan(layers=4, recomputed=0, offload=False, reason="test")) == 0
    assert model.config.use_cache is False
    assert model.generation_config.use_cache is not False  # generation keeps its cache
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
