"""ftcli.engine.patch: patched models give the unpatched model's loss and gradients, per builtin architecture.

With the plain-PyTorch references (what `auto` uses on a CPU without the interpreter) the patched
model must be bitwise identical to transformers + PEFT; with Triton under TRITON_INTERPRET=1 it must
agree to fp32 rounding. Also: PEFT LoRA/QLoRA layers, TRL's fused LM head takeover, undo, notices.
"""

from __future__ import annotations

import pytest
import torch
from helpers.numerics import TOL, launched
from helpers.patched import base_model, batch_for, compare, loss_and_grads, tiny_model

from ftcli.engine import patch
from ftcli.models.builtin import builtin_path

ARCHS = ["tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral", "qwen2"]
NORMS = {"tiny-llama3": 9, "tiny-gemma3": 25, "tiny-qwen3": 17, "tiny-phi3": 9, "tiny-mistral": 9, "qwen2": 5}


@pytest.mark.parametrize("name", ARCHS)
def test_reference_patch_is_bitwise_identical(name, no_interpreter):
    """`auto` on a CPU without the interpreter: references in the patched code path, exact to the bit."""
    plain, patched = tiny_model(name), tiny_model(name)
    logs = []
    report = patch.apply(patched, "auto", log=logs.append)
    assert report.impl == "reference" and report.architecture
    act = "geglu" if "gemma" in name else "swiglu"
    n_layers = base_model(name).config.num_hidden_layers
    linears = 4 if "phi3" in name else 7  # Phi-3 fuses qkv and gate/up
    assert report.as_dict()["ops"] == {"rms_norm": NORMS[name], "rope": n_layers, act: n_layers,
                                       "fused_linear_ce": 1, "lora_linear": linears * n_layers,
                                       "window_attention": 1}  # the decoder model: packed and plain rows
    assert logs and logs[0].startswith("kernels (reference")
    ids, labels = batch_for(base_model(name))
    n_items = torch.tensor(int((labels != -100).sum()) + 5)  # as if other micro-batches shared the step
    compare(loss_and_grads(plain, ids, labels, num_items_in_batch=n_items),
             loss_and_grads(patched, ids, labels, num_items_in_batch=n_items), 0.0)
    plain.eval()
    patched.eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, patched(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["tiny-llama3", pytest.param("tiny-gemma3", marks=pytest.mark.slow),
                                  pytest.param("tiny-phi3", marks=pytest.mark.slow)])
def test_triton_patch_matches_unpatched(name, interpreter):
    """Triton kernels (interpreted) in every patched module: loss and LoRA grads to fp32 rounding."""
    softcap = 3.0 if "gemma" in name else None  # exercise Gemma's final-logit soft-capping too
    plain, patched = tiny_model(name, softcap=softcap), tiny_model(name, softcap=softcap)
    report = patch.apply(patched, "auto")
    assert report.impl == "triton"
    ids, labels = batch_for(base_model(name), seed=2)
    act = "geglu" if "gemma" in name else "swiglu"
    fused_mlp = () if "phi3" in name else ("lora_mlp",)  # Phi-3's packed gate_up_proj keeps the per-layer path
    with launched("rms_norm_fwd", "rms_norm_bwd", "rope_qk", f"{act}_fwd", f"{act}_bwd", "ce_rows", "lora_linear",
                  *fused_mlp):
        got = loss_and_grads(patched, ids, labels)
    compare(loss_and_grads(plain, ids, labels), got, 10 * TOL[torch.float32])


def test_train_and_eval_switches_keep_the_patched_forwards(no_interpreter):
    """transformers' hub kernelization (on by default in newer 5.x once `kernels` is installed) re-runs on every
    train()/eval() switch and popped our RMSNorm forwards: the Trainer's model.train() silently undid them."""
    model = tiny_model("tiny-llama3")
    report = patch.apply(model, "auto")
    norms = [m for n, m in model.named_modules() if n.endswith("norm")]
    assert norms and len(report.replaced["rms_norm"]) == len(norms)
    model.train()
    model.eval()
    model.train()
    assert all("forward" in m.__dict__ and m.__dict__.get("_ftcli_patched") == "rms_norm" for m in norms)
    assert not getattr(model.get_base_model(), "use_kernels", False)


def test_generation_and_eval_use_the_models_own_head(no_interpreter):
    plain, patched = tiny_model("tiny-llama3", lora=False), tiny_model("tiny-llama3", lora=False)
    patch.apply(patched)
    ids, _ = batch_for(plain)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(ids, **kw), patched.generate(ids, **kw))


def test_lora_layers_that_cannot_fuse_keep_peft_and_disable_adapter_falls_back(no_interpreter):
    model = tiny_model("tiny-llama3", dropout=0.1)
    report = patch.apply(model, ["lora_linear"])
    assert report.replaced["lora_linear"] == [] and any("kept PEFT's forward" in n for n in report.notices)

    plain, patched = tiny_model("tiny-llama3"), tiny_model("tiny-llama3")
    report = patch.apply(patched, ["lora_linear", "rms_norm"])
    assert report.applied == ["rms_norm", "lora_linear"]
    ids, _ = batch_for(plain)
    patched.eval()
    with torch.no_grad(), patched.disable_adapter():
        assert torch.equal(patched(input_ids=ids).logits, base_model("tiny-llama3").eval()(input_ids=ids).logits)


def test_qlora_nf4_layers_are_fused(no_interpreter):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def make():
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               bnb_4bit_use_double_quant=True)
        m = AutoModelForCausalLM.from_pretrained(builtin_path("builtin:tiny-qwen3"), quantization_config=q,
                                                 dtype=torch.float32)
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=False)
        torch.manual_seed(0)
        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.full_like(p, 0.01))
        return m

    plain, patched = make(), make()
    report = patch.apply(patched)
    assert len(report.replaced["lora_linear"]) == 28
    ids, labels = batch_for(plain.get_base_model())
    compare(loss_and_grads(plain, ids, labels), loss_and_grads(patched, ids, labels), 0.0)


def _sft_trainer(model, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(4):
        ids = torch.randint(5, 1000, (6 + 3 * i,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to=[],
                     use_cpu=True, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
                     disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(builtin_path("builtin:tiny-llama3"))
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


@pytest.mark.parametrize("impl", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
def test_trl_sft_fused_head_is_taken_over_with_the_same_loss_grads_and_metrics(impl, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if impl == "triton" else "0")
    results = []
    for patched in (False, True):
        trainer = _sft_trainer(tiny_model("tiny-llama3"), tmp_path / str(patched))
        if patched:
            report = patch.apply(trainer.model)
            lm = trainer.model.get_base_model()
            assert "fused_linear_ce" in report.applied and lm.__dict__["_ftcli_fused_head"]["outputs"] == (
                "log_probs", "entropy", "is_top1")
        batch = dict(next(iter(trainer.get_train_dataloader())))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(40))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append(((loss.detach(), grads), dict(trainer._metrics["train"])))
        if patched:
            patch.undo(report)  # TRL's own head is back
            assert lm.__dict__["forward"].__func__.__code__.co_name == "_fused_forward"
    compare(results[0][0], results[1][0], 10 * TOL[torch.float32])
    for key in ("entropy", "mean_token_accuracy"):
        assert abs(results[0][1][key][0] - results[1][1][key][0]) <= 1e-5


def test_unknown_architecture_is_left_alone_with_one_notice():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32))
    logs = []
    report = patch.apply(model, "auto", log=logs.append)
    assert report.applied == [] and len(logs) == 1 and "gpt2" in logs[0] and "unpatched" in logs[0]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_ops_values_and_undo(no_interpreter):
    model = tiny_model("tiny-qwen3")
    assert patch.apply(model, False).applied == []
    with pytest.raises(patch.KernelsUnavailable):
        patch.apply(model, True)  # Triton required, and neither CUDA nor the interpreter is here
    with pytest.raises(patch.KernelsUnavailable):
        patch.apply(model, ["rms_norm", "flash_attention"])
    report = patch.apply(model, ["rope", "swiglu"], log=lambda _: None)
    assert report.applied == ["rope", "swiglu"] and report.as_dict()["ops"] == {"rope": 4, "swiglu": 4}
    assert patch.apply(model, ["rope"]).applied == []  # already patched modules are skipped
    patch.undo(report)
    assert not any("forward" in m.__dict__ or "_ftcli_patched" in m.__dict__ for m in model.modules())
    ids, labels = batch_for(base_model("tiny-qwen3"))
    compare(loss_and_grads(tiny_model("tiny-qwen3"), ids, labels), loss_and_grads(model, ids, labels), 0.0)


def test_num_items_in_batch_reaches_the_fused_loss(no_interpreter):
    """Negative control at model level: ignoring the trainer's count changes the loss."""
    model = tiny_model("tiny-mistral", lora=False)
    patch.apply(model, ["fused_linear_ce"])
    ids, labels = batch_for(model)
    n_real = int((labels[:, 1:] != -100).sum())
    model.train()
    local = model(input_ids=ids, labels=labels).loss
    step = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(4 * n_real)).loss
    assert torch.allclose(step * 4, local, rtol=1e-6)


@pytest.mark.slow
def test_exact_gradient_accumulation_holds_with_the_triton_fused_loss(tmp_path, monkeypatch):
    """The foundation GA test (batch 8 x GA 1 == batch 2 x GA 4, float64) with our fused head in the loss.

    The runner's `patch.apply` (train.kernels) is narrowed to the fused CE op with Triton under the
    interpreter (it takes over TRL's fused head); the naive per-micro-batch mean must still fail.
    """
    from helpers import ga
    from ftcli.stages import sft

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reports = []
    real_apply = patch.apply

    def fused_ce_only(model, ops="auto", log=lambda _: None, impl="auto"):
        reports.append(real_apply(model, ["fused_linear_ce"], log=log, impl="triton"))
        return reports[-1]

    monkeypatch.setattr(patch, "apply", fused_ce_only)
    with launched("ce_rows"):
        big_w, _ = ga.run_once(tmp_path, "b8ga1", 8, 1)
        acc_w, _ = ga.run_once(tmp_path, "b2ga4", 2, 4)
    monkeypatch.setattr(sft, "EXACT_GA", False)
    naive_w, _ = ga.run_once(tmp_path, "naive", 2, 4)
    assert len(reports) == 3 and all(r.applied == ["fused_linear_ce"] and r.impl == "triton" for r in reports)
    scale = ga.update_size(big_w)
    exact, naive = ga.max_weight_diff(big_w, acc_w), ga.max_weight_diff(big_w, naive_w)
    assert exact < 1e-9 * scale
    assert naive > 1e-2 * scale
