"""DPO: pairs rendered with the template, the loss equals its closed form for every supported loss type
(log-probs taken by the test from full logits), the reference is the adapter-free base, and a short
run on the bundled set learns to prefer the chosen replies."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ftcli.data import templates, formats
from ftcli.models import lora, pretrained
from ftcli import recipe
from ftcli.runner import rundir
from ftcli.runner import train as training
from ftcli.stages import trainer_args
from ftcli.errors import DataError
from ftcli.recipe import DPO_LOSS_TYPES
from ftcli.stages import dpo
from helpers.runs import REPO, write_jsonl, write_recipe

PAIRS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.", "rejected": "I don't know."},
    {"prompt": [{"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
     "rejected": [{"role": "assistant", "content": "Lyon."}]},
    {"prompt": "Say hi.", "chosen": "Hello there, nice to meet you!", "rejected": "No."},
    {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "A color is a thing that you see with eyes, like red."},
]


def dpo_recipe(tmp_path, dataset, dtype="float32", **dpo_section):
    path = write_recipe(
        tmp_path / "dpo.yaml",
        model={"name": "builtin:tiny-llama3", "max_seq_length": 128, "dtype": dtype},
        template={"name": "llama3"},
        dataset={"path": str(dataset), "format": "preference"},
        lora={"r": 4, "alpha": 8},
        train={"stage": "dpo", "max_steps": 2, "per_device_train_batch_size": 4, "dpo": {"beta": 0.5, **dpo_section}},
        output_dir=str(tmp_path / "run"),
    )
    return recipe.load(path)


def build(tmp_path, **dpo_section):
    loaded = dpo_recipe(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", PAIRS), **dpo_section)
    model, tokenizer = pretrained.load(loaded.model)
    template = templates.resolve("llama3", tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    dataset = dpo.build_dataset(rows, template, tokenizer, loaded, report)
    model = lora.add_lora(model, loaded.lora, False)
    trainer = dpo.build_trainer(loaded, model, tokenizer, dataset, None, str(tmp_path / "ck"),
                                trainer_args.precision_flags(torch.float32), [], [])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained a while, so the policy differs from the reference
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.05)
    return trainer, dataset, tokenizer, template


def sequence_logps(model, batch):
    """Sum of log p(completion token) per sequence, from full logits: the test's own reference."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.double()
    token_logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].double()
    return (token_logp * mask).sum(1), token_logp, mask


def closed_form(kind, pc, pr, rc, rr, beta, eps, lengths, chosen_token_logps, chosen_mask, tau=0.05):
    """Per loss type, the formula of its paper (TRL's documented variants: IPO and sigmoid_norm average
    over reply tokens), averaged over pairs."""
    ls = F.logsigmoid
    c, r = pc - rc, pr - rr                        # implicit rewards / beta
    delta = c - r
    len_c, len_r = lengths
    if kind == "sigmoid":
        loss = -ls(beta * delta)
    elif kind == "hinge":
        loss = torch.relu(1 - beta * delta)
    elif kind == "ipo":
        loss = (c / len_c - r / len_r - 1 / (2 * beta)) ** 2
    elif kind == "exo_pair":
        loss = (torch.sigmoid(beta * delta) * (ls(beta * delta) - math.log(1 - eps))
                + torch.sigmoid(-beta * delta) * (ls(-beta * delta) - math.log(eps)))
    elif kind == "nca_pair":
        loss = -ls(beta * c) - 0.5 * ls(-beta * c) - 0.5 * ls(-beta * r)
    elif kind == "robust":
        loss = (-(1 - eps) * ls(beta * delta) + eps * ls(-beta * delta)) / (1 - 2 * eps)
    elif kind == "bco_pair":
        loss = -ls(beta * c) - ls(-beta * r)
    elif kind == "sppo_hard":
        loss = (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    elif kind in ("aot", "aot_unpaired"):
        if kind == "aot":
            d = torch.sort(pc - pr).values - torch.sort(rc - rr).values
        else:
            d = torch.sort(c).values - torch.sort(r).values
        loss = -(1 - eps) * ls(beta * d) - eps * ls(-beta * d)
    elif kind == "apo_zero":
        loss = (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)
    elif kind == "apo_down":
        loss = torch.sigmoid(beta * c) + (1 - torch.sigmoid(beta * (c - r)))
    elif kind == "discopop":
        x = beta * delta
        mix = torch.sigmoid(x / tau)
        loss = -ls(x) * (1 - mix) + torch.exp(-x) * mix
    elif kind == "sft":
        return -(chosen_token_logps * chosen_mask).sum() / chosen_mask.sum()
    elif kind == "sigmoid_norm":
        loss = -ls(beta * (c / len_c - r / len_r))
    else:
        raise AssertionError(kind)
    return loss.mean()


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_loss_equals_closed_form_from_full_logits(tmp_path, loss_type):
    eps = 0.1 if loss_type in ("robust", "exo_pair", "aot", "aot_unpaired") else 0.0
    trainer, dataset, _, _ = build(tmp_path, loss_type=loss_type, label_smoothing=eps)
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    model = trainer.model
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        policy, token_logps, mask = sequence_logps(model, batch)
        with model.disable_adapter():
            reference, _, _ = sequence_logps(model, batch)
    n = len(dataset)
    pc, pr, rc, rr = policy[:n], policy[n:], reference[:n], reference[n:]
    assert not torch.allclose(pc, rc)  # the adapter really moves the policy away from the reference
    lengths = batch["completion_mask"].sum(1).double().chunk(2)
    expected = closed_form(loss_type, pc, pr, rc, rr, 0.5, eps, lengths, token_logps[:n], mask[:n])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)


def test_reference_is_the_base_without_a_second_model_and_can_be_precomputed(tmp_path):
    trainer, dataset, _, _ = build(tmp_path, precompute_ref_log_probs=True)
    assert trainer.ref_model is None  # no copy of the weights: the adapter is switched off instead
    assert list(trainer.model.peft_config) == ["default"]
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad(), trainer.model.disable_adapter():
        base, _, _ = sequence_logps(trainer.model, batch)
    n = len(dataset)
    stored = trainer.train_dataset
    assert torch.allclose(torch.tensor(stored["ref_chosen_logps"], dtype=torch.float64), base[:n], atol=1e-4)
    assert torch.allclose(torch.tensor(stored["ref_rejected_logps"], dtype=torch.float64), base[n:], atol=1e-4)


def test_log_probs_never_go_through_full_logits(tmp_path):
    trainer, dataset, _, _ = build(tmp_path)
    head = trainer.model.get_output_embeddings()

    def refuse(*_args, **_kwargs):
        raise AssertionError("the lm_head module built [tokens, vocab] logits")

    head.forward = refuse
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert any(p.grad is not None for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_pairs_use_the_template_and_text_equals_messages(tmp_path):
    loaded = dpo_recipe(tmp_path, write_jsonl(tmp_path / "p.jsonl", PAIRS))
    _, tokenizer = pretrained.load(loaded.model)
    template = templates.resolve("llama3", tokenizer)
    text_row, message_row = PAIRS[0], {
        "prompt": [{"role": "user", "content": PAIRS[0]["prompt"]}],
        "chosen": [{"role": "assistant", "content": PAIRS[0]["chosen"]}],
        "rejected": [{"role": "assistant", "content": PAIRS[0]["rejected"]}]}
    pair = dpo.encode_pair(text_row, template, tokenizer)
    assert pair == dpo.encode_pair(message_row, template, tokenizer)
    messages = message_row["prompt"] + message_row["chosen"]
    assert pair["prompt_ids"] == templates.prompt_ids(template, message_row["prompt"], tokenizer)
    sft = templates.encode(template, messages, tokenizer)  # the tokens SFT trains are the reply DPO scores
    trained = [t for t, label in zip(sft["input_ids"], sft["labels"]) if label != -100]
    assert pair["chosen_ids"] == trained
    assert tokenizer.decode(pair["chosen_ids"]).endswith("<|eot_id|>")


def test_implicit_pairs_split_at_the_shared_prefix_and_bad_ones_are_explained(tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    implicit = {"chosen": conv + [{"role": "assistant", "content": "Hello!"}],
                "rejected": conv + [{"role": "assistant", "content": "Go away."}]}
    rows, fmt, _ = formats.read_rows(formats.DatasetSection(path=str(write_jsonl(tmp_path / "i.jsonl", [implicit]))))
    assert fmt == "preference"
    assert rows[0] == {"prompt": conv, "chosen": [{"role": "assistant", "content": "Hello!"}],
                       "rejected": [{"role": "assistant", "content": "Go away."}]}
    no_prefix = {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                 "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    same = {"chosen": implicit["chosen"], "rejected": implicit["chosen"]}
    text_only = {"chosen": "good", "rejected": "bad"}
    for bad, message in ((no_prefix, "share no opening turns"), (same, "are the same conversation"),
                         (text_only, "must be whole conversations")):
        with pytest.raises(DataError, match=message):
            formats.read_rows(formats.DatasetSection(path=str(write_jsonl(tmp_path / "b.jsonl", [bad])),
                                               format="preference"))


def test_truncation_keeps_the_prompt_end_and_the_reply_start(tmp_path):
    long = {"prompt": "word " * 60, "chosen": "yes " * 40, "rejected": "no " * 40}
    loaded = dpo_recipe(tmp_path, write_jsonl(tmp_path / "l.jsonl", [long, PAIRS[0]]),
                        max_prompt_length=32, max_completion_length=16)
    _, tokenizer = pretrained.load(loaded.model)
    template = templates.resolve("llama3", tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    full = dpo.encode_pair(rows[0], template, tokenizer)
    built = dpo.build_dataset(rows, template, tokenizer, loaded, report)
    assert built[0]["prompt_ids"] == full["prompt_ids"][-32:]
    assert built[0]["chosen_ids"] == full["chosen_ids"][:16] and len(built[0]["rejected_ids"]) == 16
    assert built[1] == dpo.encode_pair(rows[1], template, tokenizer)  # short pairs are left whole
    assert report.rows_truncated == 1 and len(built) == 2


@pytest.mark.slow
def test_short_dpo_run_raises_the_reward_margin_on_the_bundled_set(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = recipe.load(REPO / "recipes" / "llama3-dpo.yaml", [
        "model.name=builtin:tiny-llama3", "model.dtype=auto", "model.max_seq_length=128", "train.max_steps=12",
        "train.per_device_train_batch_size=8", "train.gradient_accumulation_steps=1", "train.learning_rate=2e-3",
        "train.warmup_ratio=0", "train.lr_scheduler_type=constant", "train.gradient_checkpointing=false",
        "train.logging_steps=1", "dataset.eval_fraction=0.25", "train.eval_steps=12", f"output_dir={tmp_path / 'run'}"])
    result = training.run(loaded)
    logged = [m for m in result.metrics if "rewards/margins" in m]
    evals = [m for m in result.metrics if "eval_rewards/margins" in m]
    assert logged[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    late = logged[-3:]
    assert min(m["rewards/margins"] for m in late) > 0.5
    assert sum(m["rewards/accuracies"] for m in late) / len(late) >= 0.9
    assert evals[-1]["eval_rewards/margins"] > 0.3 and evals[-1]["eval_rewards/accuracies"] >= 0.75
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in logged[-1]
    run = result.run_dir
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "loss.png").exists()
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 16
    assert "stage: dpo" in (run / "recipe.resolved.yaml").read_text()
    assert rundir.read_metrics(run / "metrics.jsonl") == result.metrics


def _padding(trainer) -> tuple[int, int]:
    """(padded positions, real tokens) over one epoch of the trainer's own train dataloader."""
    padded = real = 0
    for batch in trainer.get_train_dataloader():
        padded += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
    return padded, real


def test_pairs_are_batched_by_length_so_little_padding_is_computed(tmp_path):
    """Unpacked DPO batches pad to their longest pair; the sampler groups pairs of similar length within
    shuffled windows, so far less padding is computed than under random batching (the negative control)."""
    rows = [{"prompt": f"Question {i}: " + "tell me more " * (1 + (i * 7) % 23), "chosen": "Sure. " * (1 + i % 5),
             "rejected": "No."} for i in range(64)]
    loaded = dpo_recipe(tmp_path, write_jsonl(tmp_path / "varied.jsonl", rows))
    model, tokenizer = pretrained.load(loaded.model)
    template = templates.resolve("llama3", tokenizer)
    rows, _, report = formats.read_rows(loaded.dataset)
    dataset = dpo.build_dataset(rows, template, tokenizer, loaded, report)
    trainer = dpo.build_trainer(loaded, lora.add_lora(model, loaded.lora, False), tokenizer, dataset, None,
                                str(tmp_path / "ck"), trainer_args.precision_flags(torch.float32), [], [])
    assert trainer.args.train_sampling_strategy == "group_by_length"
    grouped, real = _padding(trainer)
    trainer.args.train_sampling_strategy = "random"
    shuffled, _ = _padding(trainer)
    print(f"padded positions per real token: grouped {grouped / real:.3f}, random {shuffled / real:.3f}")
    # chosen and rejected share a batch, so some padding stays; grouping must cut random batching's by half
    assert (grouped - real) < 0.5 * (shuffled - real)
