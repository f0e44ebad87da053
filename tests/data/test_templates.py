"""Chat templates: parity with the released templates, loss masks, resolve() and encode().

Offline: every tokenizer here is a tiny byte-level BPE trained on a few sentences with
the family's special tokens, wrapped in a real transformers fast tokenizer.
"""

from __future__ import annotations

import functools

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ftcli.data import templates
from ftcli.data.templates import FAMILIES, ChatTemplateError, encode, family_info, load_family, prompt_ids, render, resolve

from helpers import runs as support
from helpers.runs import fixtures_dir  # noqa: E402

# Our family -> the released template it must equal byte for byte.
FIXTURE_OF = {
    "llama3": "llama-3-instruct.jinja",
    "llama3.1": "llama-3.1-instruct.jinja",
    "gemma3": "gemma-3-it.jinja",
    "chatml": "chatml.jinja",
    "qwen3": "qwen3.jinja",
    "phi3": "phi-3-mini-4k-instruct.jinja",
    "phi4": "phi-4.jinja",
    "mistral": "mistral-7b-instruct-v0.3.jinja",
}

SYSTEM = "You are a helpful assistant."
Q1, A1 = "What is the capital of France?", "The capital of France is Paris."
Q2, A2 = "And of Italy?", "Rome is the capital of Italy."

CORPUS = [SYSTEM, Q1, A1, Q2, A2, "system user assistant model", "Hello there, how are you today?"] * 3




def build_tokenizer(family: str, add_bos: bool | None = None, bos: str | None = "") -> PreTrainedTokenizerFast:
    """A small real fast tokenizer with the family's special tokens (as in templates/<family>.yaml).

    `add_bos` / `bos` override the family's settings ("" keeps the family's bos).
    """
    info = family_info(family)
    bos = info["bos_token"] if bos == "" else bos
    add_bos = info["add_bos_token"] if add_bos is None else add_bos
    named = [t for t in (bos, info["eos_token"], info["pad_token"]) if t]
    specials = list(dict.fromkeys([*info["special_tokens"], *named]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in info.get("added_tokens", [])])
    if add_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=info["eos_token"], pad_token=info["pad_token"]
    )


make_tokenizer = functools.cache(build_tokenizer)  # shared: tests must not modify these


def convs(family: str) -> dict[str, list[dict]]:
    """Golden conversations; families without a system role get none."""
    sys = [{"role": "system", "content": SYSTEM}] if family_info(family)["supports_system"] else []
    one = [*sys, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]
    return {
        "single": one,
        "multi": [*one, {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}],
        "prompt": [*sys, {"role": "user", "content": Q1}],
    }


# ---------------------------------------------------------------- registry and files


def test_families_listed():
    assert set(FIXTURE_OF) == set(FAMILIES)
    for family in FAMILIES:
        info = family_info(family)
        t = load_family(family)
        assert t.name == family and t.end_of_turn == info["end_of_turn"]
        assert t.end_of_turn in t.stop_tokens
        assert info["end_of_turn"] in info["special_tokens"]
        assert set(info["stop_tokens"]) <= set(info["special_tokens"])
        for key in ("bos_token", "eos_token", "pad_token"):
            assert info[key] is None or info[key] in info["special_tokens"], (family, key)
        assert isinstance(info["add_bos_token"], bool) and isinstance(info["supports_system"], bool)


def test_missing_fixtures_skip_locally_but_fail_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(support, "FIXTURES", tmp_path / "absent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        fixtures_dir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        fixtures_dir()


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_template_bytes_equal_release(family):
    ours = templates._template_dir().joinpath(f"{family}.jinja").read_bytes()
    assert ours == (fixtures_dir() / "templates" / FIXTURE_OF[family]).read_bytes()


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_render_parity_with_release(family):
    real = templates.ChatTemplate("real", (fixtures_dir() / "templates" / FIXTURE_OF[family]).read_text(), None, ())
    tok = make_tokenizer(family)
    for kind, messages in convs(family).items():
        gen = kind == "prompt"
        assert render(load_family(family), messages, tok, gen) == render(real, messages, tok, gen), kind


# Hand-checked renderings of convs()["single"] and, for generation, convs()["prompt"].
GOLDEN = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama3.1": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "gemma3": (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n",
        "<start_of_turn>model\n",
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "qwen3": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "phi3": (
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\nThe capital of France is Paris.<|end|>\n<|endoftext|>",
        "<|assistant|>\n",
    ),
    "phi4": (
        "<|im_start|>system<|im_sep|>You are a helpful assistant.<|im_end|>"
        "<|im_start|>user<|im_sep|>What is the capital of France?<|im_end|>"
        "<|im_start|>assistant<|im_sep|>The capital of France is Paris.<|im_end|>",
        "<|im_start|>assistant<|im_sep|>",
    ),
    "mistral": (
        "<s>[INST] What is the capital of France?[/INST] The capital of France is Paris.</s>",
        "",  # no generation prompt: the prompt ends with [/INST]
    ),
}


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_golden_rendering(family):
    t, tok, c = load_family(family), make_tokenizer(family), convs(family)
    full, gen_suffix = GOLDEN[family]
    assert render(t, c["single"], tok) == full
    prompt = render(t, c["prompt"], tok, add_generation_prompt=True)
    assert prompt == render(t, c["prompt"], tok).removesuffix("<|endoftext|>") + gen_suffix


# ---------------------------------------------------------------- loss masks

# What each family trains in the two assistant turns of convs()["multi"]: the content and
# the end-of-turn token, plus what the template itself writes into the assistant turn.
TRAINED = {
    "llama3": [A1 + "<|eot_id|>", A2 + "<|eot_id|>"],
    "llama3.1": [A1 + "<|eot_id|>", A2 + "<|eot_id|>"],
    "gemma3": [A1 + "<end_of_turn>", A2 + "<end_of_turn>"],
    "chatml": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    # Qwen3 writes an (empty) think block into the last assistant turn only.
    "qwen3": [A1 + "<|im_end|>", "<think>\n\n</think>\n\n" + A2 + "<|im_end|>"],
    "phi3": [A1 + "<|end|>", A2 + "<|end|>"],
    "phi4": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    # Mistral puts a space between [/INST] and the answer; it belongs to the answer.
    "mistral": [" " + A1 + "</s>", " " + A2 + "</s>"],
}


def trained_runs(tok, ids, labels) -> list[str]:
    """Decoded text of each maximal run of trained tokens."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != templates.IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_assistant_mask(family):
    t, tok = load_family(family), make_tokenizer(family)
    out = encode(t, convs(family)["multi"], tok)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels) and not out["truncated"]
    for i, lab in zip(ids, labels):  # shown by pytest when the test fails
        print(f"{'TRAIN' if lab != -100 else '     '} {tok.convert_ids_to_tokens(i)!r}")

    assert trained_runs(tok, ids, labels) == TRAINED[family]
    # Every end-of-turn token that closes an assistant turn is trained, the others are not.
    eot_id = tok.convert_tokens_to_ids(t.end_of_turn)
    eot_labels = [lab for i, lab in zip(ids, labels) if i == eot_id]
    assert eot_labels.count(eot_id) == 2
    # BOS exactly once, first, where the family uses one; never otherwise.
    info = family_info(family)
    n_bos = ids.count(tok.bos_token_id) if tok.bos_token_id is not None else 0
    if info["add_bos_token"]:
        assert n_bos == 1 and ids[0] == tok.bos_token_id and labels[0] == -100
    else:
        assert n_bos == 0


def test_mask_with_real_phi3_tokenizer():
    # The released Phi-3 tokenizer (SentencePiece-style BPE, "▁" pieces, no BOS on encode).
    path = fixtures_dir() / "tokenizers" / "phi-3-mini-4k-instruct" / "tokenizer.json"
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    out = encode(load_family("phi3"), convs("phi3")["multi"], tok)
    assert trained_runs(tok, out["input_ids"], out["labels"]) == TRAINED["phi3"]
    assert tok.bos_token_id not in out["input_ids"]
    assert out["input_ids"][-1] == tok.eos_token_id and out["labels"][-1] == -100  # trailing eos: not trained


def test_no_double_bos_with_real_gemma_post_processor():
    # torchtune's cropped Gemma tokenizer: its post-processor adds <bos>, and gemma3.jinja prints it too.
    path = fixtures_dir() / "tokenizers" / "gemma.cropped-derived" / "tokenizer.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # it does add BOS on encode
    out = encode(load_family("gemma3"), convs("gemma3")["multi"], tok)
    assert out["input_ids"].count(tok.bos_token_id) == 1 and out["input_ids"][0] == tok.bos_token_id
    runs = trained_runs(tok, out["input_ids"], out["labels"])
    assert len(runs) == 2 and all(r.endswith("<end_of_turn>") for r in runs)


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_prompt_ids_match_training_tokens(family):
    # At inference the prompt must be tokenized exactly as the same text was in training.
    t, tok = load_family(family), make_tokenizer(family)
    msgs = convs(family)["multi"]
    train = encode(t, msgs, tok)
    prompt = prompt_ids(t, msgs[:-1], tok)
    assert train["input_ids"][: len(prompt)] == prompt
    assert train["labels"][len(prompt) - 1] == -100 and train["labels"][len(prompt)] != -100


def test_token_straddling_the_turn_start_is_trained():
    # SentencePiece-style (Gemma-like: spaces -> "▁", no pre-tokenizer split): the header's
    # "\n" and the reply's first word become one token "\nThe". It holds reply text, so train it.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Replace("▁", " ")
    pieces = ["user", "model", "Hi", "\nThe", "▁capital", "\n"]
    specials = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(pieces * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The capital"}]
    out = encode(load_family("gemma3"), msgs, tok)
    pairs = list(zip(tok.convert_ids_to_tokens(out["input_ids"]), out["labels"]))
    assert ("\nThe", tok.convert_tokens_to_ids("\nThe")) in pairs  # the straddling token is trained
    assert [t for t, lab in pairs if lab != -100] == ["\nThe", "▁capital", "<end_of_turn>"]


def test_bos_prepended_once_when_template_lacks_it():
    tok = make_tokenizer("chatml", add_bos=True, bos="<|endoftext|>")
    out = encode(load_family("chatml"), convs("chatml")["single"], tok)
    assert out["input_ids"][0] == tok.bos_token_id and out["input_ids"].count(tok.bos_token_id) == 1
    assert out["labels"][0] == -100
    assert trained_runs(tok, out["input_ids"], out["labels"]) == [A1 + "<|im_end|>"]
    # And no BOS when the tokenizer does not add one.
    plain = make_tokenizer("chatml", add_bos=False, bos="<|endoftext|>")
    assert tok.bos_token_id not in encode(load_family("chatml"), convs("chatml")["single"], plain)["input_ids"]


def test_qwen3_reasoning_in_last_turn_is_trained():
    tok = make_tokenizer("qwen3")
    msgs = convs("qwen3")["multi"]
    msgs[-1] = {"role": "assistant", "content": "<think>\nItaly.\n</think>\n\n" + A2}
    out = encode(load_family("qwen3"), msgs, tok)
    assert trained_runs(tok, out["input_ids"], out["labels"])[-1] == "<think>\nItaly.\n</think>\n\n" + A2 + "<|im_end|>"


def test_not_prefix_stable_template_is_reported(tmp_path):
    # The generation prompt says "assistant" but assistant turns are written as "model".
    path = tmp_path / "odd.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ 'model' if m.role == 'assistant' else m.role }}\n"
        "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = make_tokenizer("chatml")
    with pytest.raises(ChatTemplateError, match="not prefix-stable at turn 2"):
        encode(resolve(str(path), tok), convs("chatml")["single"], tok)


# ---------------------------------------------------------------- encode()


def test_train_on_all_and_truncation():
    t, tok = load_family("llama3"), make_tokenizer("llama3")
    msgs = convs("llama3")["multi"]
    full = encode(t, msgs, tok, train_on="all")
    assert full["labels"] == full["input_ids"] and not full["truncated"]
    assert full["input_ids"].count(tok.bos_token_id) == 1
    assert full["input_ids"] == encode(t, msgs, tok)["input_ids"]
    cut = encode(t, msgs, tok, max_length=10)
    assert cut["truncated"] and len(cut["input_ids"]) == len(cut["labels"]) == 10
    assert cut["input_ids"] == full["input_ids"][:10]
    exact = encode(t, msgs, tok, max_length=len(full["input_ids"]))
    assert not exact["truncated"]


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], "message 0 must be a dict"),
        ([{"role": "tool", "content": "x"}], "message 0: role 'tool'"),
        ([{"role": "user"}], r"message 0 \(user\): 'content' must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}], "message 1 .*NoneType"),
        ([{"role": "assistant", "content": "hi"}], "message 0 is an assistant turn"),
    ],
)
def test_bad_messages(messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        encode(load_family("chatml"), messages, make_tokenizer("chatml"))


def test_none_valued_keys_are_dropped():
    # Rows from a datasets.Dataset carry every column, e.g. tool_calls=None on plain turns.
    t, tok = load_family("llama3.1"), make_tokenizer("llama3.1")
    msgs = convs("llama3.1")["single"]
    padded = [{**m, "tool_calls": None, "reasoning_content": None} for m in msgs]
    assert render(t, padded, tok) == render(t, msgs, tok)


def test_bad_arguments():
    t, tok, msgs = load_family("chatml"), make_tokenizer("chatml"), convs("chatml")["single"]
    with pytest.raises(ChatTemplateError, match="train_on"):
        encode(t, msgs, tok, train_on="completion")
    with pytest.raises(ChatTemplateError, match="max_length"):
        encode(t, msgs, tok, max_length=0)


def test_template_exception_is_wrapped():
    tok = make_tokenizer("mistral")
    with pytest.raises(ChatTemplateError, match="roles must alternate.*no system role"):
        render(load_family("mistral"), convs("chatml")["single"], tok)
    # Gemma 3 folds the system prompt into the first user turn instead.
    assert SYSTEM + "\n\n" + Q1 in render(load_family("gemma3"), convs("gemma3")["single"], make_tokenizer("gemma3"))


# ---------------------------------------------------------------- resolve()


def test_resolve_family():
    assert resolve("gemma3", make_tokenizer("gemma3")) is load_family("gemma3")


def test_resolve_unknown_family_lists_families():
    with pytest.raises(ChatTemplateError) as e:
        resolve("gemma9", make_tokenizer("gemma3"))
    assert all(f in str(e.value) for f in FAMILIES)
    with pytest.raises(ChatTemplateError, match="known families"):
        family_info("gemma9")


@pytest.mark.parametrize("family", sorted(FIXTURE_OF))
def test_resolve_auto(family):
    tok = build_tokenizer(family)
    tok.chat_template = load_family(family).source
    t = resolve("auto", tok)
    assert t.name == "auto" and t.source == load_family(family).source
    assert t.end_of_turn == load_family(family).end_of_turn  # mistral: from eos_token "</s>"
    assert set(t.stop_tokens) >= {t.end_of_turn, tok.eos_token}
    assert all(s in tok.get_vocab() for s in t.stop_tokens)
    assert t.supports_system == family_info(family)["supports_system"]
    assert encode(t, convs(family)["multi"], tok) == encode(load_family(family), convs(family)["multi"], tok)


def test_resolve_auto_without_template():
    tok = make_tokenizer("chatml")
    assert tok.chat_template is None
    with pytest.raises(ChatTemplateError, match="has none.*template.name"):
        resolve("auto", tok)


def test_resolve_path(tmp_path):
    tok = make_tokenizer("chatml")
    path = tmp_path / "mine.jinja"
    path.write_text(load_family("chatml").source)
    t = resolve(str(path), tok)
    assert t.name == str(path) and t.end_of_turn == "<|im_end|>" and t.supports_system
    # A .yaml beside the file overrides the guess.
    path.with_suffix(".yaml").write_text('end_of_turn: "<|endoftext|>"\nstop_tokens: ["<|endoftext|>"]\n')
    t = resolve(str(path), tok)
    assert t.end_of_turn == "<|endoftext|>" and t.stop_tokens == ("<|endoftext|>", "<|im_end|>")
    with pytest.raises(ChatTemplateError, match="not found: .*missing.jinja"):
        resolve(str(tmp_path / "missing.jinja"), tok)
