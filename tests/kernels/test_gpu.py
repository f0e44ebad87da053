"""GPU kernel tests beyond tests/engine/test_gpu.py (`pytest -m gpu`): the paths SFT/DPO/GRPO actually take.

tests/engine/test_gpu.py covers each op at real shapes and patched-vs-unpatched models. Here: the chunked
selected-token log-probs (what TRL's fused head calls, taken over by patch.apply) with entropy and its
gradient, the fused residual-add RMSNorm, LoRA with PEFT's fp32 adapters and a base bias, QLoRA NF4
dequantised on the GPU, the fused CE / log-probs under bf16 autocast (QLoRA's setting), and TRL's
SFTTrainer on a patched model. Tolerance rule as in test_gpu.py: the Triton result must be at least
(about) as close to an fp32 truth as the bf16 reference computation is.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def check(name, ours, bf16_ref, truth, slack=2.0, floor=2e-3):
    e_ours, e_ref = rel(ours, truth), rel(bf16_ref, truth)
    print(f"{name}: triton {e_ours:.2e}, bf16 reference {e_ref:.2e}")
    assert e_ours <= max(slack * e_ref, floor), (name, e_ours, e_ref)


def launched(fn):
    from ftcli.kernels import LAUNCHES

    before = sum(LAUNCHES.values())
    out = fn()
    assert sum(LAUNCHES.values()) > before, "the Triton path did not run"
    return out


@pytest.mark.parametrize("softcap,temperature", [(None, 1.0), (30.0, 0.7)])
def test_selected_logprobs_real_shape(softcap, temperature):
    from ftcli.kernels import fused_linear_ce as op

    torch.manual_seed(0)
    n, h, v = 8192, 4096, 128256
    hidden = (torch.randn(n, h, device=DEV) * 0.5).to(torch.bfloat16)
    weight = (torch.randn(v, h, device=DEV) * 0.02).to(torch.bfloat16)
    labels = torch.randint(0, v, (n,), device=DEV)
    labels[::4] = -100
    outs = ("log_probs", "entropy", "is_top1")
    kw = dict(softcap=softcap, temperature=temperature, outputs=outs)

    def run(fn, hd, w, ent_coef):
        hd = hd.clone().requires_grad_()
        res = fn(hd, w, labels, **kw)
        (-res["log_probs"].sum() / 1000 + ent_coef * res["entropy"].sum() / 1000).backward()
        return res, hd.grad

    for ent_coef in (0.0, 0.1):  # 0: gradient formed in the forward; 0.1: the recompute path
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ours, g = launched(lambda: run(op.selected_logprobs, hidden, weight, ent_coef))
        extra = torch.cuda.max_memory_allocated() - base
        ref, g_ref = run(op.selected_logprobs_reference, hidden, weight, ent_coef)
        truth, g_truth = run(op.selected_logprobs_reference, hidden.float(), weight.float(), ent_coef)
        check(f"logprobs ent={ent_coef} log_probs", ours["log_probs"], ref["log_probs"], truth["log_probs"])
        check(f"logprobs ent={ent_coef} entropy", ours["entropy"], ref["entropy"], truth["entropy"])
        check(f"logprobs ent={ent_coef} dhidden", g, g_ref, g_truth)
        print(f"logprobs extra peak {extra / 2**30:.2f} GiB (full bf16 logits: {n * v * 2 / 2**30:.2f} GiB)")
        assert extra < 0.5 * n * v * 2
        agree = (ours["is_top1"] == truth["is_top1"]).float().mean().item()
        assert agree > 0.999, agree


def test_add_rms_norm_real_shape():
    from ftcli.kernels import rms_norm as op

    torch.manual_seed(0)
    x = torch.randn(8192, 4096, device=DEV, dtype=torch.bfloat16)
    r = torch.randn(8192, 4096, device=DEV, dtype=torch.bfloat16)
    w = (torch.randn(4096, device=DEV) * 0.1 + 1.0).to(torch.bfloat16)
    dy, dh = torch.randn_like(x), torch.randn_like(x)

    def run(fn, *ins):
        leaves = [t.clone().requires_grad_() for t in ins]
        y, h = fn(*leaves, 1e-6)
        ((y.float() * dy.float()).sum() + (h.float() * dh.float()).sum()).backward()
        return [y, h] + [t.grad for t in leaves]

    ours = launched(lambda: run(op.add_rms_norm, x, r, w))
    ref = run(op.add_rms_norm_reference, x, r, w)
    truth = run(op.add_rms_norm_reference, x.float(), r.float(), w.float())
    for name, a, b, t in zip(("y", "h", "dx", "dres", "dw"), ours, ref, truth):
        check(f"add_rms_norm {name}", a, b, t)


def test_lora_linear_fp32_adapters_and_bias():
    """PEFT's default: bf16 base, fp32 adapters (autocast_adapter_dtype); a base bias (Qwen2's q/k/v)."""
    from ftcli.kernels import lora_linear as op

    torch.manual_seed(0)
    x = torch.randn(4096, 4096, device=DEV, dtype=torch.bfloat16)
    w = (torch.randn(1024, 4096, device=DEV) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(1024, device=DEV) * 0.1).to(torch.bfloat16)
    a = torch.randn(16, 4096, device=DEV) * 0.02
    b = torch.randn(1024, 16, device=DEV) * 0.02

    def run(fn, x_, w_, bias_):
        leaves = [t.clone().requires_grad_() for t in (x_, a, b)]
        y = fn(leaves[0], w_, leaves[1], leaves[2], 2.0, bias_)
        y.float().pow(2).sum().div(1e4).backward()
        return [y] + [t.grad for t in leaves]

    ours = run(op.lora_linear, x, w, bias)
    ref = run(op.lora_linear_reference, x, w, bias)
    truth = run(op.lora_linear_reference, x.float(), w.float(), bias.float())
    for name, o, r_, t in zip(("y", "dx", "dA", "dB"), ours, ref, truth):
        check(f"lora fp32 adapters {name}", o, r_, t)


def test_qlora_nf4_dequantised_on_gpu():
    bnb = pytest.importorskip("bitsandbytes")
    from ftcli.kernels import lora_linear as op

    torch.manual_seed(0)
    w = torch.randn(4096, 2048) * 0.02
    lin = bnb.nn.Linear4bit(2048, 4096, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
    lin = lin.to(DEV)
    packed, qs = lin.weight.data, lin.weight.quant_state
    x = torch.randn(2048, 2048, device=DEV, dtype=torch.bfloat16)
    a = torch.randn(16, 2048, device=DEV) * 0.02
    b = torch.randn(4096, 16, device=DEV) * 0.02

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, a, b)]
        y = fn(leaves[0], packed, leaves[1], leaves[2], 0.5, None, qs)
        y.float().pow(2).sum().div(1e4).backward()
        return [y] + [t.grad for t in leaves]

    ours = run(op.lora_linear)
    ref = run(op.lora_linear_reference)
    for name, o, r_ in zip(("y", "dx", "dA", "dB"), ours, ref):
        err = rel(o, r_)
        print(f"qlora {name}: {err:.2e} vs the dequantise-then-matmul reference")
        assert err < 1e-2
    assert any(buf.device.type == "cuda" for buf in op._BUFFERS.values())


def test_fused_losses_under_bf16_autocast():
    """QLoRA setting: fp32 hidden states and lm_head under bf16 autocast; grads come back in fp32."""
    from ftcli.kernels import fused_linear_ce as op

    torch.manual_seed(0)
    hidden = torch.randn(2048, 1024, device=DEV, requires_grad=True)
    weight = torch.randn(32000, 1024, device=DEV) * 0.02
    labels = torch.randint(0, 32000, (2048,), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = launched(lambda: op.fused_linear_cross_entropy(hidden, weight, labels))
        res = op.selected_logprobs(hidden, weight, labels)
    loss.backward()
    g_ce = hidden.grad.clone()
    hidden.grad = None
    (-res["log_probs"].mean()).backward()
    assert g_ce.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert rel(hidden.grad, g_ce) < 2e-2  # same math: mean NLL


def test_trl_sft_on_a_patched_model_matches_trls_own_head(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftcli.engine import patch
    from ftcli.models.builtin import builtin_path

    path = builtin_path("builtin:tiny-llama3")
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(8):
        ids = torch.randint(5, 1000, (40 + 7 * i,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 10 + ids[10:]})
    results = []
    for patched in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(DEV)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator(DEV).manual_seed(len(n)))
        args = SFTConfig(output_dir=str(tmp_path / str(patched)), per_device_train_batch_size=8, max_steps=1,
                         report_to=[], bf16=True, dataset_kwargs={"skip_prepare_dataset": True},
                         remove_unused_columns=False, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(path))
        if patched:
            report = patch.apply(trainer.model, True)
            assert report.impl == "triton" and "fused_linear_ce" in report.applied
        batch = {k: v.to(DEV) for k, v in next(iter(trainer.get_train_dataloader())).items()}
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(500, device=DEV))
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for n, p in trainer.model.named_parameters()
                           if p.grad is not None])
        results.append((loss.item(), grads))
    (l0, g0), (l1, g1) = results
    cos = torch.nn.functional.cosine_similarity(g0, g1, dim=0).item()
    print(f"TRL SFT: loss {l1:.5f} vs TRL's head {l0:.5f}; grad cosine {cos:.5f}")
    assert abs(l1 - l0) / l0 < 5e-3 and cos > 0.99
