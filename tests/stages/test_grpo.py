"""GRPO: prompts rendered with the template, advantages are group z-scores, the piecewise forward/backward
gives the same gradients as one big forward, log-probs never build full logits, and a short run on a
builtin model learns a verifiable task. Also the SFT -> DPO -> GRPO chain through model.adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ftcli.data import templates, formats
from ftcli.models import lora, pretrained
from ftcli import recipe
from ftcli.runner import rundir
from ftcli.runner import train as training
from ftcli.stages import trainer_args
from ftcli.errors import BadInput
from ftcli.stages import grpo
from ftcli.engine import logprobs
from helpers.runs import REPO, conversation, write_jsonl, write_recipe
from helpers.sandbox import needs_sandbox

PROMPTS = ["Tell me about colors.", "What do you see?", "Describe the sky.", "Say something.",
           "Name a thing.", "Write a word.", "What is nice?", "Give me an answer."]


def grpo_recipe(tmp_path, dataset=None, model="builtin:tiny-llama3", template="llama3", grpo_section=None,
                adapter=None, name="grpo", **train):
    dataset = dataset or write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "answer": str(i)}
                                                                  for i, p in enumerate(PROMPTS)])
    section = {"num_generations": 4, "max_completion_length": 10, "loss_type": "grpo",
               "rewards": [{"type": "regex", "pattern": "blue"}], **(grpo_section or {})}
    path = write_recipe(tmp_path / f"{name}.yaml", model={"name": model, "max_seq_length": 128, "adapter": adapter},
                        template={"name": template}, dataset={"path": str(dataset), "format": "prompt"},
                        lora=None if adapter else {"r": 8, "alpha": 16},
                        train={"stage": "grpo", "max_steps": 2, "per_device_train_batch_size": 8,
                               "logging_steps": 1, "grpo": section, **train},
                        output_dir=str(tmp_path / name))
    return recipe.load(path)


def build(tmp_path, reward_funcs, **kw):
    loaded = grpo_recipe(tmp_path, **kw)
    model, tokenizer = pretrained.load(loaded.model)
    template = templates.resolve(loaded.template.name, tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    dataset = grpo.build_dataset(rows, template, tokenizer, loaded, report)
    model = lora.add_lora(model, loaded.lora, False)
    trainer = grpo.build_trainer(loaded, model, tokenizer, template, dataset, None, str(tmp_path / "ck"),
                                 trainer_args.precision_flags(torch.float32), [], [], reward_funcs)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; these tests call pieces directly
    return trainer, dataset


def groups(trainer, dataset, prompts=2):
    g = trainer.num_generations
    return [dict(dataset[i]) for i in range(prompts) for _ in range(g)]  # TRL's sampler repeats each prompt


class Recorder:
    """A reward that remembers what it returned: a deterministic function of the completion text."""

    def __init__(self, name, fn):
        self.__name__, self.fn, self.seen = name, fn, []

    def __call__(self, prompts, completions, **kwargs):
        values = [float(self.fn(c)) for c in completions]
        self.seen.append(values)
        return values


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("model, template", [("builtin:tiny-llama3", "llama3"), ("builtin:tiny-qwen3", "qwen3")])
def test_prompts_are_rendered_with_the_template_and_keep_their_columns(tmp_path, model, template):
    rows_in = [{"prompt": "What is 2 + 2?", "answer": "4", "level": 1},
               {"prompt": [{"role": "user", "content": "And 3 + 3?"}], "answer": "6", "level": 2},
               {"prompt": "word " * 300, "answer": "0", "level": 3}]
    loaded = grpo_recipe(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows_in), model=model, template=template,
                         grpo_section={"max_prompt_length": 64})
    _, tokenizer = pretrained.load(loaded.model)
    tpl = templates.resolve(template, tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    built = grpo.build_dataset(rows, tpl, tokenizer, loaded, report)
    assert len(built) == 2 and report.rows_skipped == 1 and "max_prompt_length" in report.skipped_examples[0]
    assert built["answer"] == ["4", "6"] and built["level"] == [1, 2]
    for text, messages in zip(built["prompt"], ([{"role": "user", "content": "What is 2 + 2?"}],
                                                rows_in[1]["prompt"])):
        # TRL tokenizes text prompts with tokenizer(text): that must give the template's prompt ids
        assert tokenizer(text)["input_ids"] == templates.prompt_ids(tpl, messages, tokenizer)


# --------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", ["group", "none"])
def test_advantages_are_the_group_z_score_of_the_weighted_reward(tmp_path, scale):
    length = Recorder("chars", lambda c: len(c) % 7)
    vowels = Recorder("vowels", lambda c: sum(ch in "aeiou" for ch in c) % 3)
    trainer, dataset = build(tmp_path, [length, vowels], grpo_section={
        "scale_rewards": scale, "rewards": [{"type": "regex", "pattern": "x", "weight": 1.0},
                                            {"type": "regex", "pattern": "y", "weight": 0.5}]})
    batch = trainer._generate_and_score_completions(groups(trainer, dataset))
    total = torch.tensor(length.seen[-1]) + 0.5 * torch.tensor(vowels.seen[-1])
    grouped = total.view(-1, trainer.num_generations)
    centred = grouped - grouped.mean(1, keepdim=True)
    expected = centred / (grouped.std(1, keepdim=True) + 1e-4) if scale == "group" else centred  # std: n - 1
    assert grouped.std(1).min() > 0  # the groups really differ, so the check means something
    assert torch.allclose(batch["advantages"].cpu(), expected.flatten(), atol=1e-5)
    assert torch.allclose(batch["advantages"].view(-1, trainer.num_generations).sum(1), torch.zeros(2), atol=1e-4)


def test_each_reward_mean_is_logged_under_its_own_name(tmp_path):
    loaded = grpo_recipe(tmp_path, grpo_section={"rewards": [
        {"type": "regex", "pattern": "e"}, {"type": "length", "max_length": 5, "buffer": 5},
        {"type": "numeric_match", "column": "answer", "weight": 2.0}]})
    result = training.run(loaded)
    logged = [m for m in result.metrics if "reward" in m]
    for name in ("regex", "length", "numeric_match"):
        assert f"rewards/{name}/mean" in logged[0]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (result.run_dir / "loss.png").exists() and (result.run_dir / "recipe.resolved.yaml").exists()


@needs_sandbox
def test_code_tests_scores_real_completions_in_the_sandbox(tmp_path, monkeypatch):
    from ftcli.rewards import sandbox

    seen = []
    real_run_many = sandbox.run_many
    monkeypatch.setattr(sandbox, "run_many", lambda jobs, **kw: seen.extend(jobs) or real_run_many(jobs, **kw))
    rows = [{"prompt": p, "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]} for p in PROMPTS]
    loaded = grpo_recipe(tmp_path, dataset=write_jsonl(tmp_path / "code.jsonl", rows),
                         grpo_section={"rewards": [{"type": "code_tests", "timeout": 2}]})
    result = training.run(loaded)
    logged = [m for m in result.metrics if "rewards/code_tests/mean" in m]
    assert logged and all(m["rewards/code_tests/mean"] == 0.0 for m in logged)  # a random tiny model writes no add()
    assert len(seen) >= 8 and all(tests == rows[0]["tests"] for _, tests in seen)  # TRL passed each row's column


def test_reward_problems_stop_the_run_before_training(tmp_path):
    loaded = grpo_recipe(tmp_path, grpo_section={"rewards": [{"type": "numeric_match", "column": "solution"}]})
    with pytest.raises(BadInput, match="column 'solution'"):
        training.run(loaded)
    assert not (tmp_path / "grpo" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- memory: pieces and log-probs


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_piecewise_forward_backward_equals_one_big_forward(tmp_path, loss_type):
    chars = Recorder("chars", lambda c: len(c))
    trainer, dataset = build(tmp_path, [chars], grpo_section={"loss_type": loss_type})
    batch = trainer._generate_and_score_completions(groups(trainer, dataset))
    # completions of different lengths (as if some stopped early), so pieces differ in token counts
    mask = batch["completion_mask"].clone()
    for row, stop in enumerate([3, 10, 1, 7, 10, 5, 2, 9]):
        mask[row, stop:] = 0
    batch["completion_mask"], batch["num_items_in_batch"] = mask, mask.sum()
    results, calls = {}, []
    inner = trainer._compute_loss
    trainer._compute_loss = lambda model, inputs: calls.append(inputs["completion_ids"].shape) or inner(model, inputs)
    for setting in ("all", 1, 3):
        trainer.sequences_per_forward = setting
        trainer.model.zero_grad()
        calls.clear()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        results[setting] = (loss.item(), _grads(trainer.model))
        assert len(calls) == {"all": 1, 1: 8, 3: 3}[setting]
        if setting == 1:
            assert [shape[1] for shape in calls] == [3, 10, 1, 7, 10, 5, 2, 9]  # right padding cut per piece
    ref_loss, ref_grads = results["all"]
    assert ref_grads and max(g.abs().max().item() for g in ref_grads.values()) > 0
    for setting in (1, 3):
        loss, got = results[setting]
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7)
        for name, grad in ref_grads.items():
            assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-7), (setting, name)


def test_auto_pieces_hold_about_4096_tokens():
    trainer = grpo.FtcliGRPOTrainer.__new__(grpo.FtcliGRPOTrainer)
    trainer.loss_type, trainer.top_entropy_quantile = "dapo", 1.0
    trainer.model = torch.nn.Linear(1, 1)
    trainer.is_deepspeed_enabled = trainer.is_fsdp_enabled = False
    inputs = {"prompt_ids": torch.zeros(8, 512), "completion_ids": torch.zeros(8, 1024)}
    trainer.sequences_per_forward = "auto"
    assert trainer._piece_rows(inputs) == 2
    trainer.sequences_per_forward = "all"
    assert trainer._piece_rows(inputs) is None
    trainer.sequences_per_forward = 1
    assert trainer._piece_rows(inputs) == 1


def test_grpo_log_probs_never_go_through_full_logits(tmp_path):
    trainer, dataset = build(tmp_path, [Recorder("chars", len)])
    batch = trainer._generate_and_score_completions(groups(trainer, dataset))  # generation may use lm_head
    head = trainer.model.get_output_embeddings()

    def refuse(*_args, **_kwargs):
        raise AssertionError("the lm_head module built [tokens, vocab] logits")

    head.forward = refuse
    trainer.compute_loss(trainer.model, batch).backward()


def test_ftcli_kernel_log_probs_match_full_logits(tmp_path, monkeypatch):
    """Under the Triton interpreter our fused head serves TRL's calls; values and gradients match."""
    from ftcli.kernels import LAUNCHES

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    loaded = grpo_recipe(tmp_path)
    model, tokenizer = pretrained.load(loaded.model)
    model = lora.add_lora(model, loaded.lora, False)
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy"))
    assert logprobs.install(model, outputs=("log_probs", "entropy")) is None
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=gen)
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :3] = -100  # prompt tokens are not scored
    before = sum(LAUNCHES.values())
    fused = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
    assert sum(LAUNCHES.values()) > before  # our Triton kernel (interpreted) did the work
    fused.sum().backward()
    fused_grads = _grads(model)
    model.zero_grad()
    reference = logprobs.full_logits_logprobs(model, ids, attention, labels)
    reference.sum().backward()
    assert torch.allclose(fused, reference, atol=1e-4)
    for name, grad in _grads(model).items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-3, atol=1e-5), name
    logprobs.uninstall(model)


# --------------------------------------------------------------------------- learning and recipes


@pytest.mark.slow
def test_short_grpo_run_learns_to_say_the_required_word(tmp_path):
    """tiny-llama3 says ' blue' in about 1 of 15 completions at first; rewarding it must make it the norm."""
    loaded = grpo_recipe(tmp_path, max_steps=12, per_device_train_batch_size=16, learning_rate=5e-3,
                         lr_scheduler_type="constant", seed=3,
                         grpo_section={"num_generations": 8, "max_completion_length": 12,
                                       "rewards": [{"type": "regex", "pattern": r"\bblue\b", "name": "says_blue"}]})
    result = training.run(loaded)
    means = [m["rewards/says_blue/mean"] for m in result.metrics if "rewards/says_blue/mean" in m]
    assert len(means) == 12
    early, late = sum(means[:2]) / 2, sum(means[-3:]) / 3
    assert early < 0.35 and late > 0.75 and late - early > 0.4, means


def test_bundled_grpo_recipe_runs_on_its_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = recipe.load(REPO / "recipes" / "qwen3-grpo.yaml", [
        "model.name=builtin:tiny-qwen3", "model.dtype=auto", "train.max_steps=2", "train.save_steps=null",
        "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false",
        "train.grpo.max_completion_length=8", f"output_dir={tmp_path / 'run'}"])
    result = training.run(loaded)
    logged = [m for m in result.metrics if "reward" in m]
    assert len(logged) == 2
    assert "rewards/numeric_match/mean" in logged[0] and "rewards/format/mean" in logged[0]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_sft_then_dpo_then_grpo_continue_one_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    sft_rows = [conversation(f"What is {i} + 1?", f"{i} + 1 = {i + 1}.") for i in range(16)]
    sft = training.run(recipe.load(write_recipe(
        tmp_path / "sft.yaml", dataset={"path": str(write_jsonl(tmp_path / "sft.jsonl", sft_rows))},
        lora={"r": 4, "alpha": 8}, train={"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 5e-3},
        output_dir=str(tmp_path / "sft"))))
    dpo_run = training.run(recipe.load(write_recipe(
        tmp_path / "dpo.yaml", model={"name": "builtin:tiny-llama3", "max_seq_length": 128,
                                      "adapter": str(sft.adapter_dir)},
        dataset={"path": str(REPO / "recipes" / "data" / "preference-sample.jsonl"), "format": "preference"},
        lora=None, train={"stage": "dpo", "max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3},
        output_dir=str(tmp_path / "dpo"))))
    first = next(m for m in dpo_run.metrics if "rewards/margins" in m)
    # the reference is the SFT model (the adapter's frozen copy), so at step 1 the policy equals it exactly
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    saved = load_file(dpo_run.adapter_dir / "adapter_model.safetensors")
    assert saved.keys() == load_file(sft.adapter_dir / "adapter_model.safetensors").keys()
    assert not (dpo_run.adapter_dir / "ref").exists()
    assert json.loads((dpo_run.adapter_dir / "adapter_config.json").read_text())["r"] == 4
    grpo_run = training.run(grpo_recipe(tmp_path, adapter=str(dpo_run.adapter_dir), name="grpo-chain"))
    assert grpo_run.adapter_dir.exists() and rundir.read_metrics(grpo_run.run_dir / "metrics.jsonl")
    changed = load_file(grpo_run.adapter_dir / "adapter_model.safetensors")
    assert changed.keys() == saved.keys()
    assert any(not torch.equal(changed[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_grpo_bench_plumbing_on_the_cpu(tmp_path):
    """`python -m ftcli.bench.grpo` (run on a GPU by the lead): both modes train, from the same seeds."""
    from ftcli.bench import grpo

    spec = dict(shape="tiny-llama", generations=4, prompt_tokens=16, completion_tokens=6, steps=1, kernels=False,
                sequences_per_forward=1)
    trl_result = grpo.run_mode({**spec, "mode": "trl", "out_dir": str(tmp_path / "trl")})
    ours = grpo.run_mode({**spec, "mode": "ftcli", "out_dir": str(tmp_path / "ftcli")})
    assert trl_result.ok and ours.ok and ours.mean_completion_length == 6.0
    assert ours.first_grad_norm == pytest.approx(trl_result.first_grad_norm, rel=1e-4)
    assert "first-step LoRA grad norm" in grpo.table([trl_result, ours])
