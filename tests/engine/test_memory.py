"""The memory pre-flight: parameter counts match real models, and each knob moves it the right way."""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from ftcli.models import builtin, lora
from ftcli.engine import memory, plan
from ftcli.recipe import LoraSection

LLAMA_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)


@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-qwen3", "tiny-mistral"])
def test_parameter_counts_match_the_real_model(name):
    path = builtin.builtin_path(name)
    shape = memory.Shape.from_config(AutoConfig.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert shape.layers * (shape.layer_params() - 2 * shape.hidden) + shape.embedding_params() == matrices
    assert norms >= shape.layers * 2 * shape.hidden
    peft_model = lora.add_lora(model, LoraSection(r=8), gradient_checkpointing=False)
    trainable, _ = lora.trainable_parameters(peft_model)
    assert memory.lora_params(shape, 8, "all-linear") == trainable


def test_llama_8b_weights_are_about_15_gib_in_bf16():
    shape = memory.Shape.from_config(LLAMA_8B)
    est = memory.estimate(shape, batch=4, seq=2048)
    assert 14.5 < est.weights / memory.GiB < 15.5  # 8.03e9 params x 2 bytes
    assert est.trainable_params == 41_943_040     # the well-known r=16 all-linear count for Llama-3-8B


def test_each_knob_moves_the_estimate_the_right_way():
    shape = memory.Shape.from_config(LLAMA_8B)
    base = memory.estimate(shape, batch=4, seq=2048)
    assert memory.estimate(shape, batch=8, seq=2048).total > base.total
    assert memory.estimate(shape, batch=4, seq=4096).total > base.total
    assert memory.estimate(shape, batch=4, seq=2048, gradient_checkpointing=False).activations > 4 * base.activations
    assert memory.estimate(shape, batch=4, seq=2048, load_in_4bit=True).weights < 0.4 * base.weights
    full = memory.estimate(shape, batch=4, seq=2048, lora_r=None)
    assert full.trainable_state > 4.5 * base.weights  # grads + fp32 Adam moments


def test_advice_names_the_settings_that_help(tmp_path):
    from ftcli import recipe
    from helpers.runs import write_recipe

    loaded = recipe.load(write_recipe(tmp_path / "r.yaml", train={"gradient_checkpointing": False}))
    tips = " ".join(plan.advice(loaded))
    assert "gradient_checkpointing" in tips and "per_device_train_batch_size" in tips
    assert "max_seq_length" in tips and "load_in_4bit" in tips


def test_advice_goes_one_preset_leaner(tmp_path):
    from ftcli import recipe
    from helpers.runs import write_recipe

    def tips(memory_preset):
        loaded = recipe.load(write_recipe(tmp_path / f"{memory_preset}.yaml", train={"memory": memory_preset}))
        return " ".join(plan.advice(loaded))

    assert "train.memory: lean" in tips("fast") and "minimal" not in tips("fast")
    assert "train.memory: minimal" in tips("lean")
    assert "train.memory:" not in tips("minimal")  # already the leanest preset


def test_the_estimate_prices_the_fused_mlp_chunks_it_runs():
    """The estimator's chunk size is the kernel's, and on the bench shapes its lean estimate stays within 0..+6%
    of the peak an H200 measured (2026-12-02, docs/benchmarks.md): never below, so the pre-flight check does
    not let a run through that would not fit."""
    from ftcli.bench import lora_step
    from ftcli.kernels import lora_mlp

    assert memory.LORA_MLP_CHUNK_ROWS == lora_mlp.CHUNK_ROWS
    measured = {"llama3-8b": 16.68, "qwen3-8b": 17.03, "gemma3-4b": 8.65}
    for arch, peak in measured.items():
        shape = memory.Shape.from_config(lora_step.make_config(arch))
        estimate = memory.estimate(shape, batch=4, seq=2048, offload=True, fused_kernels=True).total / memory.GiB
        assert peak <= estimate <= 1.06 * peak, (arch, estimate, peak)
