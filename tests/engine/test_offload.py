"""ftcli.engine.offload on CPU: the "offload" is a copy into a host buffer, the same path as on CUDA minus the streams."""
import pytest
import torch

pytest.importorskip("peft")
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: E402

from ftcli.engine import offload  # noqa: E402

N_LAYERS = 3


def make_model(attention_dropout=0.0):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                      attention_dropout=attention_dropout)
    model = transformers.LlamaForCausalLM(config).to(torch.float64)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()
    return model


def setup(mode, attention_dropout=0.0, **kwargs):
    model = make_model(attention_dropout)
    if mode != "none":
        assert offload.enable(model, offload=(mode == "offload"), **kwargs) == N_LAYERS
    model.enable_input_require_grads()  # what the trainer does for PEFT + checkpointing
    return model


def step(model, seed=1):
    """Loss and grads (LoRA weights and inputs_embeds) of one forward/backward."""
    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 256, (2, 16), generator=gen)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    torch.manual_seed(seed)
    loss = model(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    grads["inputs_embeds"] = embeds.grad
    return loss.detach(), grads


def assert_close(a, b, tol=1e-12):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=tol), (k, (a[k] - b[k]).abs().max())


def run(mode, **kwargs):
    model = setup(mode, **kwargs)
    return step(model)


@pytest.fixture(scope="module")
def reference():
    return run("none")


def test_offloaded_grads_match_no_checkpointing(reference):
    loss0, g0 = reference
    assert len(g0) == 1 + N_LAYERS * 4 * 2  # lora_A and lora_B of 4 targets per layer, plus inputs_embeds
    assert all(g.abs().sum() > 0 for g in g0.values())
    loss1, g1 = run("plain")
    model = setup("offload", min_bytes=0, keep_last=False)
    loss2, g2 = step(model)
    assert offload.offloader(model).offloaded == N_LAYERS  # every layer input really went through a host buffer
    assert torch.equal(loss0, loss1) and torch.equal(loss0, loss2)
    assert_close(g1, g0)
    assert_close(g2, g0)


def test_default_keeps_small_inputs_and_last_layer(reference):
    model = setup("offload", min_bytes=offload.MIN_BYTES)  # these hidden states are 16 KiB: all stay
    _, g = step(model)
    assert offload.offloader(model).offloaded == 0
    assert_close(g, reference[1])
    model = setup("offload", min_bytes=0)  # keep_last: the last layer's input stays
    _, g = step(model)
    assert offload.offloader(model).offloaded == N_LAYERS - 1
    assert_close(g, reference[1])


def test_corrupted_restore_is_caught(reference, monkeypatch):
    restore = offload.Offloader.restore
    monkeypatch.setattr(offload.Offloader, "restore", lambda self, *a, **kw: restore(self, *a, **kw) * 1.001)
    _, g = run("offload", min_bytes=0, keep_last=False)
    diff = max((g[k] - reference[1][k]).abs().max().item() for k in g)
    assert diff > 1e-6


def test_dropout_rng_is_replayed():
    _, g0 = run("none", attention_dropout=0.1)
    _, g1 = run("offload", attention_dropout=0.1, min_bytes=0, keep_last=False)
    assert_close(g1, g0)
    _, g_other = step(setup("none", attention_dropout=0.1), seed=2)  # dropout does change the grads
    assert max((g_other[k] - g0[k]).abs().max().item() for k in g0) > 1e-6


def test_without_rng_replay_dropout_grads_differ(monkeypatch):
    import contextlib
    _, g0 = run("none", attention_dropout=0.1)
    monkeypatch.setattr(offload._RngState, "restored", lambda self: contextlib.nullcontext())
    _, g1 = run("offload", attention_dropout=0.1, min_bytes=0, keep_last=False)
    assert max((g1[k] - g0[k]).abs().max().item() for k in g0) > 1e-6


def test_buffers_are_reused_across_steps(reference):
    model = setup("offload", min_bytes=0, keep_last=False)
    off = offload.offloader(model)
    ptrs = None
    for _ in range(3):
        _, g = step(model)
        assert_close(g, reference[1])
        assert len(off.buffers) == N_LAYERS
        now = {k: b.data_ptr() for k, b in off.buffers.items()}
        assert ptrs is None or now == ptrs
        ptrs = now
    assert off.offloaded == 3 * N_LAYERS and off.nbytes() == N_LAYERS * 2 * 16 * 64 * 8


def test_two_forwards_before_backward(reference):
    """The second forward of a layer must not overwrite the first one's buffer before its backward."""
    model = setup("offload", min_bytes=0, keep_last=False)
    gen = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 256, (2, 16), generator=gen)
    ids2 = torch.randint(0, 256, (2, 16), generator=gen)
    (model(input_ids=ids, labels=ids).loss + model(input_ids=ids2, labels=ids2).loss).backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    ref = setup("none")
    (ref(input_ids=ids, labels=ids).loss + ref(input_ids=ids2, labels=ids2).loss).backward()
    assert_close(g, {n: p.grad for n, p in ref.named_parameters() if p.requires_grad})
    assert len(offload.offloader(model).buffers) == N_LAYERS


def test_backward_after_buffer_reuse_raises():
    model = setup("offload", min_bytes=0, keep_last=False)
    ids = torch.randint(0, 256, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)  # no forward in between: the buffers still hold this graph's inputs
    model(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(RuntimeError, match="overwritten"):
        loss.backward()


def test_no_grad_forward_in_train_mode_runs_plainly():
    model = setup("offload", min_bytes=0, keep_last=False)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert not out.requires_grad and offload.offloader(model).offloaded == 0


class TupleLayer(GradientCheckpointingLayer):
    """A layer returning (tensor, None, tensor) and using a captured, grad-requiring tensor kwarg."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, x, scale=None):
        y = torch.tanh(self.lin(x)) * scale
        return y, None, y.sum(-1)


def test_tuple_outputs_and_frozen_inputs():
    """Tuple outputs pass through; parameters get grads even when the layer input does not require grad."""
    def grads(checkpointed):
        torch.manual_seed(0)
        layer = TupleLayer().train()
        scale = torch.full((8,), 0.5, dtype=torch.float64, requires_grad=True)
        if checkpointed:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = offload._LayerCheckpoint(offload.Offloader(2, min_bytes=0), 0)
        x = torch.randn(4, 8, dtype=torch.float64)  # no requires_grad
        y, none, s = layer(x, scale=scale)
        assert none is None
        (y.square().sum() + s.sum()).backward()
        return layer.lin.weight.grad, scale.grad

    (w0, s0), (w1, s1) = grads(False), grads(True)
    assert torch.allclose(w0, w1, rtol=0, atol=1e-12) and torch.allclose(s0, s1, rtol=0, atol=1e-12)


class Exp(GradientCheckpointingLayer):
    """A layer whose output is saved by its own last op (exp's backward reads its result)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, x):
        return self.lin(x).exp()


def test_a_recomputed_output_is_freed_only_when_no_backward_reads_it(monkeypatch):
    """The recompute frees the layer output's memory before its backward (only its grad_fn is needed there),
    unless the output was saved for backward: exp's gradient is its own output."""
    freed = []
    free = offload._free_unread

    def spy(outputs, kept, inputs):
        free(outputs, kept, inputs)
        freed.extend(o.untyped_storage().nbytes() == 0 for o in outputs if isinstance(o, torch.Tensor))

    monkeypatch.setattr(offload, "_free_unread", spy)
    model = setup("offload", min_bytes=0, keep_last=False)
    step(model)
    assert freed == [True] * N_LAYERS

    def grads(checkpointed):
        torch.manual_seed(0)
        layer = Exp().train()
        if checkpointed:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = offload._LayerCheckpoint(offload.Offloader(2, min_bytes=0), 0)
        x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
        layer(x).sum().backward()
        return layer.lin.weight.grad, x.grad

    freed.clear()
    (w0, x0), (w1, x1) = grads(False), grads(True)
    assert freed == [False]
    assert torch.allclose(w0, w1, rtol=0, atol=1e-12) and torch.allclose(x0, x1, rtol=0, atol=1e-12)

    # where something has switched saved-tensor hooks off, what backward reads is unknown: nothing is freed
    freed.clear()
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.disable_saved_tensors_hooks("a caller's reason"):
        step(model)
    assert freed == [False] * N_LAYERS


def test_the_previous_input_is_fetched_after_the_mlp_backward(monkeypatch):
    """The copy of the previous layer's input starts when this layer's MLP backward is done (the layer's peak is
    in it), before its attention backward; not when the layer's backward starts (before its recompute)."""
    events = []
    prefetch = offload.Offloader.prefetch_before

    def spy(self, slot, device):
        events.append(("prefetch", slot))
        return prefetch(self, slot, device)

    monkeypatch.setattr(offload.Offloader, "prefetch_before", spy)
    model = setup("offload", min_bytes=0, keep_last=False)
    for i, layer in enumerate(model.get_base_model().model.layers):
        layer.mlp.register_full_backward_pre_hook(lambda *_, i=i: events.append(("mlp starts", i)))
        layer.self_attn.register_full_backward_hook(lambda *_, i=i: events.append(("attention done", i)))
    step(model)
    backward = [("mlp starts", i) if k == 0 else ("prefetch", i) if k == 1 else ("attention done", i)
                for i in reversed(range(N_LAYERS)) for k in range(3)]
    assert events == backward


@pytest.mark.parametrize("name,skips", [("tiny-llama3", True), ("tiny-qwen3", True), ("tiny-gemma3", False)])
def test_whole_layer_recompute_with_the_triton_kernels(name, skips, monkeypatch):
    """The GPU path, interpreted: Triton norm/RoPE and the fused LoRA MLP (its product made 5 rows at a time)
    recomputed whole. Where the MLP output only enters the residual add (Llama, Qwen3) the recompute skips the
    down projection; Gemma 3 normalises the MLP output first, so its recompute makes it."""
    from helpers.numerics import launched

    from ftcli.engine import patch
    from ftcli.models.builtin import builtin_path
    from ftcli.kernels import lora_mlp

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(lora_mlp, "CHUNK_ROWS", 5)
    skipped = []
    unused = lora_mlp.output_unused

    def counting():
        skipped.append(True)
        return unused()

    monkeypatch.setattr(lora_mlp, "output_unused", counting)

    def grads(checkpointed):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_pretrained(builtin_path(f"builtin:{name}"), dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 init_lora_weights=False))
        assert patch.apply(model, "auto").impl == "triton"
        if checkpointed:
            offload.enable(model, offload=True, min_bytes=0, keep_last=False)
        model.train()
        ids = torch.randint(0, 250, (2, 13), generator=torch.Generator().manual_seed(1))
        with launched("lora_mlp"):
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    reference, got = grads(False), grads(True)
    layers = transformers.AutoConfig.from_pretrained(builtin_path(f"builtin:{name}")).num_hidden_layers
    assert len(skipped) == (layers if skips else 0)
    for key, grad in reference.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-4, atol=1e-6, msg=key)
