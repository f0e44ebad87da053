"""GPU tests (`pytest -m gpu`, run on the accelerator machine): kernels at real shapes in bf16,
patched models against unpatched ones per architecture, QLoRA and a real training run.

Each kernel is compared with its plain-PyTorch reference evaluated in fp32 on the same bf16
inputs; the Triton result must be at least as close to that fp32 truth as the reference is
when it runs in bf16 (plus a small slack), so a real bug cannot hide inside bf16 noise.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def check_against_truth(name, ours, bf16_ref, fp32_truth, slack=2.0, floor=2e-3):
    """ours must be within max(slack * error of the bf16 reference, floor) of the fp32 truth."""
    e_ours, e_ref = rel_err(ours, fp32_truth), rel_err(bf16_ref, fp32_truth)
    print(f"{name}: triton {e_ours:.2e}, bf16 reference {e_ref:.2e}")
    assert e_ours <= max(slack * e_ref, floor), (name, e_ours, e_ref)


def grads(fn, *inputs, upstream=None):
    """Outputs and input gradients of fn on fresh leaf copies of inputs."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    total = sum((o.float() * (upstream[i] if upstream else 1.0)).sum() for i, o in enumerate(outs))
    total.backward()
    return outs, [x.grad for x in leaves if x.grad is not None]


def compare_op(name, triton_fn, reference_fn, inputs, upstream=None):
    from ftcli.kernels import LAUNCHES

    before = sum(LAUNCHES.values())
    ours, ours_g = grads(triton_fn, *inputs, upstream=upstream)
    assert sum(LAUNCHES.values()) > before, f"{name}: the Triton path did not run"
    ref, ref_g = grads(reference_fn, *inputs, upstream=upstream)
    truth, truth_g = grads(reference_fn, *[x.float() if x.is_floating_point() else x for x in inputs],
                           upstream=upstream)
    for i, (a, b, t) in enumerate(zip(ours, ref, truth)):
        check_against_truth(f"{name} out{i}", a, b, t)
    for i, (a, b, t) in enumerate(zip(ours_g, ref_g, truth_g)):
        check_against_truth(f"{name} grad{i}", a, b, t)


@pytest.mark.parametrize("gemma", [False, True])
@pytest.mark.parametrize("shape", [(8192, 4096), (4, 2048, 8, 256)], ids=["hidden", "per-head-qk-norm"])
def test_rms_norm_real_shape(gemma, shape):
    """Hidden-size rows (one per program) and per-head q/k-norm rows (Gemma 3's 256 wide, tiled)."""
    from ftcli.kernels import rms_norm as op

    torch.manual_seed(0)
    x = torch.randn(*shape, device=DEV, dtype=torch.bfloat16)
    w = (torch.randn(shape[-1], device=DEV) * 0.1 + (0.0 if gemma else 1.0)).to(torch.bfloat16)
    compare_op(f"rms_norm gemma={gemma}", lambda a, b: op.rms_norm(a, b, 1e-6, gemma),
               lambda a, b: op.rms_norm_reference(a, b, 1e-6, gemma), [x, w])


def test_rope_real_shape_with_packed_positions():
    from ftcli.kernels import rope as op

    torch.manual_seed(0)
    b, t, d = 2, 4096, 128
    q = torch.randn(b, 32, t, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(b, 8, t, d, device=DEV, dtype=torch.bfloat16)
    inv = 1.0 / (500000 ** (torch.arange(0, d, 2, device=DEV).float() / d))
    angles = torch.outer(torch.arange(t, device=DEV).float(), inv)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
    # Two packed documents per row: positions restart in the middle.
    pos = torch.cat([torch.arange(t // 2), torch.arange(t - t // 2)]).to(DEV).expand(b, t).contiguous()
    compare_op("rope", lambda q_, k_: op.rope(q_, k_, cos, sin, pos),
               lambda q_, k_: op.rope_reference(q_, k_, cos.to(q_.dtype), sin.to(q_.dtype), pos), [q, k])


@pytest.mark.parametrize("which", ["swiglu", "geglu"])
def test_glu_real_shape(which):
    import importlib

    op = importlib.import_module(f"ftcli.kernels.{which}")
    torch.manual_seed(0)
    gate = torch.randn(8192, 14336, device=DEV, dtype=torch.bfloat16)
    up = torch.randn(8192, 14336, device=DEV, dtype=torch.bfloat16)
    compare_op(which, getattr(op, which), getattr(op, f"{which}_reference"), [gate, up])


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_fused_linear_cross_entropy_real_shape(softcap):
    from ftcli.kernels import LAUNCHES
    from ftcli.kernels import fused_linear_ce as op

    torch.manual_seed(0)
    hidden = (torch.randn(8192, 4096, device=DEV) * 0.5).to(torch.bfloat16)
    weight = (torch.randn(128256, 4096, device=DEV) * 0.02).to(torch.bfloat16)
    labels = torch.randint(0, 128256, (8192,), device=DEV)
    labels[::3] = -100
    n_items = int((labels != -100).sum()) * 2  # as if another micro-batch of the step held as many tokens
    kwargs = dict(num_items_in_batch=n_items, softcap=softcap)
    before = sum(LAUNCHES.values())
    h1 = hidden.clone().requires_grad_()
    loss = op.fused_linear_cross_entropy(h1, weight, labels, **kwargs)
    loss.backward()
    assert sum(LAUNCHES.values()) > before
    torch.cuda.reset_peak_memory_stats()
    h2 = hidden.float().clone().requires_grad_()
    truth = op.fused_linear_cross_entropy_reference(h2, weight.float(), labels, **kwargs)
    truth.backward()
    h3 = hidden.clone().requires_grad_()
    op.fused_linear_cross_entropy_reference(h3, weight, labels, **kwargs).backward()
    print(f"fused CE softcap={softcap}: loss {loss.item():.6f} vs fp32 {truth.item():.6f}")
    assert abs(loss.item() - truth.item()) / truth.item() < 2e-3
    check_against_truth("fused CE grad hidden", h1.grad, h3.grad, h2.grad)
    # Divided by num_items_in_batch, not by the local count: half the local mean.
    local = op.fused_linear_cross_entropy_reference(hidden.float(), weight.float(), labels, softcap=softcap)
    assert truth.item() == pytest.approx(local.item() / 2, rel=1e-4)


def test_fused_linear_cross_entropy_never_materialises_the_logits():
    from ftcli.kernels import fused_linear_ce as op

    hidden = torch.randn(16384, 4096, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(128256, 4096, device=DEV, dtype=torch.bfloat16) * 0.02
    labels = torch.randint(0, 128256, (16384,), device=DEV)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    op.fused_linear_cross_entropy(hidden, weight, labels).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    full_logits = 16384 * 128256 * 2
    print(f"fused CE extra peak {extra / 2**30:.2f} GiB vs bf16 logits {full_logits / 2**30:.2f} GiB")
    assert extra < 0.5 * full_logits


def test_window_attention_real_shape():
    """Gemma-3-4B's local layers (8/4 heads, D=256) with a 512 window: the windowed FlashAttention call
    against transformers' masked SDPA, both against the fp32 truth."""
    import torch.nn.functional as F

    from ftcli.engine import window_attention

    torch.manual_seed(0)
    b, t, window, scale = 2, 2048, 512, 256**-0.5
    q = torch.randn(b, t, 8, 256, device=DEV, dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(b, t, 4, 256, device=DEV, dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    i = torch.arange(t, device=DEV)
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)

    def masked(q_, k_, v_):
        k_, v_ = (x.repeat_interleave(2, dim=1) for x in (k_, v_))
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, scale=scale).transpose(1, 2)

    before = window_attention.CALLS["window"]
    ours, ours_g = grads(lambda *x: window_attention.attend(*x, window=window, scale=scale), q, k, v)
    assert window_attention.CALLS["window"] == before + 1
    ref, ref_g = grads(masked, q, k, v)
    truth, truth_g = grads(masked, q.float(), k.float(), v.float())
    check_against_truth("window attention out", ours[0], ref[0], truth[0])
    for name, a, r, tr in zip("qkv", ours_g, ref_g, truth_g):
        check_against_truth(f"window attention d{name}", a, r, tr)


def test_lora_linear_real_shape():
    from ftcli.kernels import lora_linear as op

    torch.manual_seed(0)
    x = torch.randn(8192, 4096, device=DEV, dtype=torch.bfloat16)
    w = (torch.randn(14336, 4096, device=DEV) * 0.02).to(torch.bfloat16)
    a = (torch.randn(16, 4096, device=DEV) * 0.02).to(torch.bfloat16)
    b = (torch.randn(14336, 16, device=DEV) * 0.02).to(torch.bfloat16)
    compare_op("lora_linear", lambda x_, a_, b_: op.lora_linear(x_, w, a_, b_, 2.0),
               lambda x_, a_, b_: op.lora_linear_reference(x_, w.to(x_.dtype), a_, b_, 2.0), [x, a, b])


# --------------------------------------------------------------------------- whole models

ARCHS = {
    "llama": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                                  num_key_value_heads=8, vocab_size=128256)),
    "mistral": ("MistralConfig", dict(hidden_size=2048, intermediate_size=7168, num_attention_heads=32,
                                      num_key_value_heads=8, vocab_size=32768)),
    "qwen2": ("Qwen2Config", dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                                  num_key_value_heads=2, vocab_size=151936)),
    "qwen3": ("Qwen3Config", dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16,
                                  num_key_value_heads=8, head_dim=128, vocab_size=151936)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8,
                                        num_key_value_heads=4, head_dim=256, vocab_size=262208,
                                        query_pre_attn_scalar=256, sliding_window=512,
                                        layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("Phi3Config", dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                                num_key_value_heads=32, vocab_size=32064)),
}


def lora_loss_and_grads(config, patched: bool):
    import transformers
    from peft import LoraConfig, get_peft_model

    from ftcli.engine import patch

    torch.manual_seed(0)
    with torch.device(DEV):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, p in model.named_parameters():  # B != 0 so every LoRA path carries gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    report = patch.apply(model, True) if patched else None
    ids = torch.randint(0, config.vocab_size, (2, 1024), generator=torch.Generator().manual_seed(2)).to(DEV)
    labels = ids.clone()
    labels[:, :100] = -100
    out = model(input_ids=ids, labels=labels, use_cache=False)  # training runs without a KV cache
    out.loss.backward()
    g = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.item(), g, report


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_patched_model_matches_unpatched(arch):
    import transformers

    class_name, kwargs = ARCHS[arch]
    config = getattr(transformers, class_name)(num_hidden_layers=2, max_position_embeddings=4096, **kwargs)
    from ftcli.engine import window_attention

    base_loss, base_g, _ = lora_loss_and_grads(config, patched=False)
    windowed = window_attention.CALLS["window"]
    loss, g, report = lora_loss_and_grads(config, patched=True)
    assert report.impl == "triton" and report.replaced.get("rms_norm")
    if arch == "gemma3":  # its local layer ran as a windowed FlashAttention call, without the mask
        assert window_attention.CALLS["window"] == windowed + 1
    cos = torch.nn.functional.cosine_similarity(
        torch.cat([g[n].flatten() for n in base_g]), torch.cat([base_g[n].flatten() for n in base_g]), dim=0)
    norm_ratio = torch.cat([g[n].flatten() for n in base_g]).norm() / torch.cat([v.flatten() for v in base_g.values()]).norm()
    print(f"{arch}: loss {loss:.5f} vs {base_loss:.5f}; grad cosine {cos.item():.5f}, norm ratio {norm_ratio.item():.4f}")
    assert abs(loss - base_loss) / base_loss < 5e-3
    assert cos.item() > 0.99 and abs(norm_ratio.item() - 1) < 0.05


def packed_and_padded_loss(config, patched: bool, packed: bool, lengths=(1500, 700, 300, 1100)):
    """LoRA loss and gradients of the same sequences packed in one row (position ids only, the SFT stage's
    batch) or right-padded in a batch, patched (varlen FlashAttention for the packed row) or not."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from ftcli.engine import patch

    torch.manual_seed(0)
    with torch.device(DEV):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    if patched:
        patch.apply(model, True)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=g) for n in lengths]
    if packed:
        ids = torch.cat(seqs)[None].to(DEV)
        positions = torch.cat([torch.arange(n) for n in lengths])[None].to(DEV)
        labels = ids.clone()
        labels[positions == 0] = -100
        out = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False)
    else:
        width = max(lengths)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], labels[i, 1:len(s)], mask[i, :len(s)] = s, s[1:], 1
        out = model(input_ids=ids.to(DEV), attention_mask=mask.to(DEV), labels=labels.to(DEV), use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen3", "mistral"])
def test_packed_rows_on_varlen_flash_attention_match_the_padded_batch(arch):
    """Packed rows through the real varlen kernel: every layer takes it, and the loss and gradients are the
    padded batch's (transformers' masked SDPA) within bf16 noise; Gemma 3's local layers keep their window."""
    import transformers

    from ftcli.engine import window_attention

    class_name, kwargs = ARCHS[arch]
    config = getattr(transformers, class_name)(num_hidden_layers=2, max_position_embeddings=4096, **kwargs)
    ref_loss, ref_g = packed_and_padded_loss(config, patched=False, packed=False)
    before = window_attention.CALLS["packed"]
    loss, g = packed_and_padded_loss(config, patched=True, packed=True)
    assert window_attention.CALLS["packed"] == before + 2  # both layers, no mask built for them to read
    flat, ref_flat = (torch.cat([d[n].flatten() for n in ref_g]) for d in (g, ref_g))
    cos = torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0).item()
    print(f"packed {arch}: loss {loss:.5f} vs padded {ref_loss:.5f}; grad cosine {cos:.5f}")
    assert abs(loss - ref_loss) / ref_loss < 5e-3 and cos > 0.99


def test_train_quickstart_on_gpu(tmp_path, monkeypatch):
    """The real runner on CUDA: bf16, Triton kernels applied, learns the answer format."""
    import re

    from ftcli import recipe
    from ftcli.runner import train as training
    from helpers.runs import REPO

    monkeypatch.chdir(REPO)
    loaded = recipe.load(REPO / "recipes" / "quickstart.yaml",
                         [f"output_dir={tmp_path / 'run'}", "export.formats=[safetensors]", "train.kernels=true"])
    result = training.run(loaded)
    assert re.fullmatch(r"ANSWER: \d+", result.sample_reply.strip()), result.sample_reply
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    print(f"quickstart on GPU: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 2.0


def test_qlora_trains_on_gpu(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from ftcli import recipe
    from ftcli.runner import train as training
    from helpers.runs import REPO

    monkeypatch.chdir(REPO)
    loaded = recipe.load(REPO / "recipes" / "qwen3-qlora.yaml",
                         ["model.name=builtin:tiny-qwen3", "train.max_steps=4", "train.logging_steps=1",
                          f"output_dir={tmp_path / 'run'}", "model.max_seq_length=256"])
    result = training.run(loaded)
    losses = [m["loss"] for m in result.metrics if "loss" in m]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_offloaded_checkpointing_on_gpu_matches_and_saves_memory():
    """lean's offload: the same LoRA gradients as no checkpointing in bf16, inputs really leave the GPU."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcli.engine import checkpointing, offload, plan

    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=4096, attn_implementation="sdpa")
    ids = torch.randint(0, 4096, (4, 2048), device=DEV, generator=torch.Generator(DEV).manual_seed(0))

    def run(plan):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(DEV, torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False))
        if plan is not None:
            checkpointing.apply(model, plan)
        model.train()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        return grads, torch.cuda.max_memory_allocated() - base, offload.offloader(model)

    plain, plain_peak, _ = run(None)
    kept, kept_peak, _ = run(plan.Plan(6, 6, False, "test"))
    offl, offl_peak, off = run(plan.Plan(6, 6, True, "test"))
    split, split_peak, split_off = run(plan.Plan(6, 6, True, "test", split=True))
    assert off is not None and off.offloaded >= 5  # every layer but the last sent its input to the host
    assert split_off.offloaded >= 11  # both blocks' inputs of every layer, but the very last block's
    for grads in (offl, split):
        for name, g in plain.items():
            err = ((grads[name] - g).norm() / g.norm().clamp_min(1e-12)).item()
            assert err < 2e-2, (name, err)
    print(f"activation peak: none {plain_peak / 2**20:.0f} MiB, recompute {kept_peak / 2**20:.0f} MiB, "
          f"recompute+offload {offl_peak / 2**20:.0f} MiB, split blocks {split_peak / 2**20:.0f} MiB")
    assert split_peak < offl_peak < kept_peak < plain_peak
