"""ftcli.engine.layer_blocks: recomputing a layer as attention and MLP blocks gives the whole layer's gradients.

Per builtin architecture (float64, LoRA on every linear layer, offloaded to host buffers on the CPU): the
split recompute, with the MLP block in token chunks where the shape asks for them (all builtins but
tiny-qwen3 and qwen2), must match no checkpointing to rounding; in backward each layer's MLP block must be
recomputed before its attention block (that order is what keeps only one block's activations alive).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from ftcli.engine import layer_blocks, offload, patch, plan  # noqa: E402
from ftcli.models.builtin import builtin_path  # noqa: E402

ARCHS = ["tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral", "qwen2"]


def _model(name: str, patched: bool = False):
    torch.manual_seed(0)
    if name == "qwen2":  # no builtin: Qwen2's q/k/v biases
        config = Qwen2Config(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=300)
        model = Qwen2ForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(builtin_path(f"builtin:{name}"), dtype=torch.float32)
    model = model.double()
    if name == "tiny-phi3":
        model.config.resid_pdrop = 0.0
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             init_lora_weights=False))
    if patched:
        patch.apply(model, impl="reference")
    return model.train()


def _grads(model):
    ids = torch.randint(0, 250, (2, 13), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _assert_same(a, b, tol=1e-10):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys() and grads_a
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=tol)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=tol, atol=tol, msg=name)


def _split(model, min_chunk_rows=1):
    """Split and offload every layer; MLP blocks recompute in token chunks (of any size) where their shape asks."""
    return offload.enable(model, offload=True, split=True, min_bytes=0, keep_last=False,
                          min_chunk_rows=min_chunk_rows)


@pytest.mark.parametrize("patched", [False, True], ids=["hf", "ftcli-patched"])
@pytest.mark.parametrize("name", ARCHS)
def test_split_recompute_matches_no_checkpointing(name, patched):
    reference = _grads(_model(name, patched))
    model = _model(name, patched)
    layers = _split(model)
    decoder = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    assert len(decoder) == layers and all(layer_blocks.is_split(layer) for layer in decoder)
    got = _grads(model)
    assert offload.offloader(model).offloaded == 2 * layers  # both blocks' inputs went through host buffers
    _assert_same(reference, got)


def test_a_wrong_layout_is_caught(monkeypatch):
    """The control: Gemma read as a pre-norm layer (its post-attention norm applied as the MLP's input norm)."""
    reference = _grads(_model("tiny-gemma3"))
    monkeypatch.setitem(layer_blocks.LAYOUTS, "gemma3_text", layer_blocks.LAYOUTS["llama"])
    model = _model("tiny-gemma3")
    _split(model)
    with pytest.raises(AssertionError):
        _assert_same(reference, _grads(model))


def test_backward_recomputes_the_mlp_block_in_two_chunks_then_the_attention_block():
    model = _model("tiny-llama3")
    _split(model)
    order = []
    for i, layer in enumerate(m for m in model.modules() if layer_blocks.is_split(m)):
        for part in ("self_attn", "mlp"):
            getattr(layer, part).register_forward_hook(
                lambda *_, tag=(i, part): order.append(tag) if torch.is_grad_enabled() else None)
    _grads(model)
    assert order == [(i, part) for i in (3, 2, 1, 0) for part in ("mlp", "mlp", "self_attn")]


def test_chunked_mlp_hands_each_gradient_to_autograd_once():
    """DDP's hooks fire once per parameter per backward: the chunks' gradients must arrive summed."""
    model = _model("tiny-llama3")
    _split(model)
    calls = {}
    for name, p in model.named_parameters():
        if p.requires_grad and ".mlp." in name:
            p.register_post_accumulate_grad_hook(lambda _, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    _grads(model)
    assert calls and set(calls.values()) == {1}, calls


def test_active_dropout_keeps_the_mlp_block_whole():
    """Chunks would draw other dropout masks than the forward did: Phi-3 with resid_pdrop > 0 is not chunked."""
    model = _model("tiny-phi3")
    model.get_base_model().model.layers[0].resid_mlp_dropout.p = 0.1
    _split(model)
    first, second = model.get_base_model().model.layers[:2]
    assert first._ftcli_blocks[1].tokenwise is None and second._ftcli_blocks[1].tokenwise.chunks == 2


def test_eval_and_no_grad_run_the_whole_layer_and_enable_again_undoes_the_split():
    model = _model("tiny-llama3")
    _split(model)
    ids = torch.randint(0, 250, (1, 9))
    with torch.no_grad():
        split_logits = model(input_ids=ids).logits
    assert offload.offloader(model).offloaded == 0
    offload.enable(model, offload=False)
    assert not any(layer_blocks.is_split(m) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, split_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="need offload"):
        offload.enable(model, offload=False, split=True)


def test_layers_without_the_layout_are_checkpointed_whole():
    vision_like = torch.nn.Module()
    vision_like.self_attn, vision_like.mlp, vision_like.layer_norm1 = (torch.nn.Identity(),) * 3
    layout = layer_blocks.LAYOUTS["llama"]
    assert not layer_blocks.fits(vision_like, layout)
    decoder = _model("tiny-llama3").get_base_model().model.layers[0]
    assert layer_blocks.fits(decoder, layout)


def test_split_recompute_with_the_triton_kernels(monkeypatch):
    """The training path on a GPU, interpreted: Triton norm/RoPE/fused LoRA MLP inside the two blocks."""
    from helpers.numerics import launched

    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def model():
        m = _model("tiny-llama3").float()
        assert patch.apply(m, "auto").impl == "triton"
        return m

    reference = _grads(model())
    split = model()
    _split(split)
    with launched("rms_norm_fwd", "rope_qk", "lora_mlp", "lora_linear"):
        got = _grads(split)
    assert offload.offloader(split).offloaded == 2 * 4
    _assert_same(reference, got, tol=1e-5)


def test_a_partial_plan_splits_only_the_recomputed_layers():
    """The first layers recompute (split, offloaded), the last ones keep their activations."""
    from ftcli.engine import checkpointing

    reference = _grads(_model("tiny-qwen3"))
    model = _model("tiny-qwen3")
    two_of_four = plan.Plan(layers=4, recomputed=2, offload=True, reason="test", split=True)
    assert checkpointing.apply(model, two_of_four) == 2
    layers = checkpointing.decoder_layers(model)
    assert [layer_blocks.is_split(m) for m in layers] == [True, True, False, False]
    assert not any(m.gradient_checkpointing for m in layers)  # the split layers checkpoint themselves
    _assert_same(reference, _grads(model))


def _allocation_peak(fn) -> int:
    """Peak of the bytes allocated (net of frees) while `fn` runs, from the profiler's per-op memory."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("chunk_rows", [None, 256], ids=["whole-mlp", "mlp-in-2-chunks"])
def test_split_lowers_the_step_peak_by_what_the_estimator_says(chunk_rows, monkeypatch):
    """Measured on the CPU allocator: a step's peak drops by one attention block's activations, and with the
    MLP block in two chunks of 256 tokens, by half the MLP block's too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcli.engine import checkpointing, memory

    config = LlamaConfig(hidden_size=512, intermediate_size=1792, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=128, vocab_size=2048, attn_implementation="sdpa")
    ids = torch.randint(0, 2048, (2, 256), generator=torch.Generator().manual_seed(0))

    def step_peak(split: bool) -> int:
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, target_modules="all-linear"))
        patch.apply(model, impl="reference")
        checkpointing.apply(model, plan.Plan(4, 4, True, "test", split=split))
        if split:
            offload.enable(model, offload=True, split=True, min_chunk_rows=chunk_rows)
        off = offload.offloader(model)
        off.min_bytes, off.keep_last = 0, False
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()  # host buffers and grads exist from here on
        return _allocation_peak(lambda: model(input_ids=ids, labels=ids).loss.backward())

    whole, split = step_peak(False), step_peak(True)
    if chunk_rows:
        monkeypatch.setattr(memory, "MIN_CHUNK_ROWS", chunk_rows)
    # the reference kernels run the MLP unfused: its backward makes whole gradients of gate, up and the input
    monkeypatch.setattr(memory, "fused_mlp_backward_temporaries_per_token",
                        lambda shape, dtype_bytes, tokens: memory.mlp_backward_temporaries_per_token(shape, dtype_bytes))
    shape = memory.Shape.from_config(config)
    kw = dict(batch=2, seq=256, dtype_bytes=4, offload=True, fused_kernels=True)
    predicted = memory.estimate(shape, **kw).working - memory.estimate(shape, **kw, split=True).working
    print(f"step peak: whole layers {whole / 2**20:.1f} MiB, split {split / 2**20:.1f} MiB; "
          f"saved {(whole - split) / 2**20:.1f} MiB, estimated {predicted / 2**20:.1f} MiB")
    assert 0.7 * predicted < whole - split < 1.3 * predicted


def test_a_deep_copy_of_a_split_model_runs_on_its_own():
    """TRL deep-copies the policy as DPO's reference model in a full finetune: the copy's layers must call
    their own modules, not the original's."""
    import copy

    model = _model("tiny-llama3")
    _split(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    ids = torch.randint(0, 250, (1, 9))
    model.eval()
    twin.eval()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, twin(input_ids=ids).logits)
    twin.train()
    plain = copy.deepcopy(twin)
    for layer in plain.modules():
        layer_blocks.remove(layer)
    _assert_same(_grads(plain), _grads(twin))  # the twin's chunked MLP backward reached the twin's weights


def test_packed_rows_reach_the_attention_block():
    """Padding-free packing: position ids restart per sequence and must reach the split attention block."""
    ids = torch.randint(0, 250, (1, 14), generator=torch.Generator().manual_seed(3))
    position_ids = torch.tensor([list(range(6)) + list(range(8))])

    def packed_grads(model, positions=position_ids):  # no cache, as in training (else no packing is seen)
        model(input_ids=ids, labels=ids, position_ids=positions, use_cache=False).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return grads

    reference = packed_grads(_model("tiny-llama3"))
    unpacked = packed_grads(_model("tiny-llama3"), positions=None)
    assert max((unpacked[k] - reference[k]).abs().max() for k in reference) > 1e-4  # packing changes the result
    split = _model("tiny-llama3")
    _split(split)
    got = packed_grads(split)
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-10, msg=name)
