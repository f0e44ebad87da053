"""Offline builtin models: they build, load like hub checkouts, and are structurally faithful."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from ftcli.models import builtin
from ftcli.data import templates
from ftcli.models.builtin import BUILTINS, BuiltinError, builtin_path, family_of, is_builtin

# name: (class, family, tied embeddings, tokenizer adds BOS)
EXPECT = {
    "tiny-llama3": ("LlamaForCausalLM", "llama3", True, True),
    "tiny-gemma3": ("Gemma3ForCausalLM", "gemma3", True, True),
    "tiny-qwen3": ("Qwen3ForCausalLM", "qwen3", True, False),
    "tiny-phi3": ("Phi3ForCausalLM", "phi3", False, False),
    "tiny-mistral": ("MistralForCausalLM", "mistral", False, True),
}
SAMPLE = ("Question: Tom has 12 apples and eats 5. How many are left?\n"
          "ANSWER: 7 apples.  Two  spaces,\ttab; (x + y) * 3 = 42! {'a': [1, 2]} #### 7 ~`|\\@$%^&_=<>")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftcli-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTCLI_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def built(cache):
    return {name: builtin_path("builtin:" + name) for name in BUILTINS}


@pytest.fixture(scope="module")
def loaded(built):
    return {name: (AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p))
            for name, p in built.items()}


def test_api():
    assert BUILTINS == tuple(EXPECT)
    assert is_builtin("builtin:tiny-llama3") and not is_builtin("tiny-llama3")
    assert not is_builtin("meta-llama/Llama-3.2-1B") and not is_builtin("./builtin")
    for name, (_, family, _, _) in EXPECT.items():
        assert family_of(name) == family == family_of("builtin:" + name)


def test_unknown_name(monkeypatch, tmp_path):
    monkeypatch.setenv("FTCLI_CACHE", str(tmp_path))
    assert is_builtin("builtin:tiny-bogus")  # the prefix claims it; builtin_path says why it is wrong
    with pytest.raises(BuiltinError) as err:
        builtin_path("builtin:tiny-bogus")
    assert all(name in str(err.value) for name in BUILTINS)
    with pytest.raises(ValueError):
        family_of("tiny-gpt2")
    assert not (tmp_path / "builtin").exists() or not any((tmp_path / "builtin").iterdir())


def test_folder_layout(built, cache):
    for name, path in built.items():
        assert path.parent == cache / "builtin" and path.name.startswith(f"{name}-v{builtin.BUILD_VERSION}")
        for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json"):
            assert (path / f).is_file(), (name, f)
        tcfg = json.loads((path / "tokenizer_config.json").read_text())
        assert tcfg["chat_template"] == templates.load_family(family_of(name)).source
    assert not [p for p in (cache / "builtin").iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("name", BUILTINS)
def test_loads_and_trains(name, loaded):
    model, tok = loaded[name]
    cls, _, tied, _ = EXPECT[name]
    cfg = model.config
    assert type(model).__name__ == cls
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert 2 <= cfg.num_hidden_layers <= 4 and cfg.max_position_embeddings >= 2048
    assert cfg.hidden_size & (cfg.hidden_size - 1) != 0  # not a power of two
    assert cfg.vocab_size == len(tok)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (emb.data_ptr() == head.data_ptr()) is tied and cfg.tie_word_embeddings is tied
    keys = load_file(builtin_path(name) / "model.safetensors").keys()
    assert ("lm_head.weight" in keys) is not tied
    ids = tok(SAMPLE, return_tensors="pt").input_ids
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and 5 < out.loss.item() < 10  # about ln(vocab) at init
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_family_structure(loaded):
    attn = {n: m.model.layers[0].self_attn for n, (m, _) in loaded.items()}
    assert hasattr(attn["tiny-qwen3"], "q_norm") and hasattr(attn["tiny-qwen3"], "k_norm")
    phi, cfg = loaded["tiny-phi3"][0], loaded["tiny-phi3"][0].config
    assert hasattr(attn["tiny-phi3"], "qkv_proj") and hasattr(phi.model.layers[0].mlp, "gate_up_proj")
    assert attn["tiny-phi3"].qkv_proj.out_features == (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) \
        * cfg.hidden_size // cfg.num_attention_heads
    assert loaded["tiny-llama3"][0].config.rope_parameters["rope_type"] == "llama3"
    g = loaded["tiny-gemma3"][0].config
    assert type(g).__name__ == "Gemma3TextConfig" and g.head_dim * g.num_attention_heads != g.hidden_size
    assert {"sliding_attention", "full_attention"} == set(g.layer_types) and g.sliding_window <= 64
    assert g.query_pre_attn_scalar == g.head_dim
    assert torch.tensor(math.sqrt(g.hidden_size), dtype=torch.bfloat16).item() != math.sqrt(g.hidden_size)


@pytest.mark.parametrize("name", BUILTINS)
def test_tokenizer(name, built, loaded):
    _, tok = loaded[name]
    raw = Tokenizer.from_file(str(built[name] / "tokenizer.json"))
    ids = tok(SAMPLE, add_special_tokens=False).input_ids
    assert tok.decode(ids) == SAMPLE
    assert raw.encode(SAMPLE).ids == tok(SAMPLE).input_ids  # the class rebuilt the same pipeline
    assert tok.unk_token_id is None or tok.unk_token_id not in ids  # ASCII is fully covered
    prose = "The answer is 42. Question: How many apples does Mary have left? Answer: 16"
    assert len(tok(prose).input_ids) < len(prose) / 3  # a trained vocabulary, not characters
    adds_bos = EXPECT[name][3]
    first = tok("Hello").input_ids[0]
    assert (first == tok.bos_token_id) is adds_bos
    tcfg = json.loads((built[name] / "tokenizer_config.json").read_text())
    assert tcfg["add_bos_token"] is adds_bos
    kind = "ByteLevel" if name in ("tiny-llama3", "tiny-qwen3") else "ByteFallback"
    assert kind in json.dumps(json.loads(raw.to_str())["decoder"])


@pytest.mark.parametrize("name", BUILTINS)
def test_special_tokens_healthy(name, built, loaded):
    model, tok = loaded[name]
    info = templates.family_info(family_of(name))
    tokens = {info["eos_token"], info["end_of_turn"], *info["special_tokens"], *info["stop_tokens"],
              *(info.get("added_tokens") or []), tok.pad_token, *([info["bos_token"]] if info["bos_token"] else [])}
    emb = model.get_input_embeddings().weight
    for t in tokens:  # each one token, in range, with a random (trained-looking) embedding row
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] < model.config.vocab_size, (t, ids)
        assert emb[ids[0]].abs().max() > 1e-3, t
    assert tok.eos_token == info["eos_token"] and tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id  # doctor T02
    gen = GenerationConfig.from_pretrained(built[name])
    eot = tok.convert_tokens_to_ids(info["end_of_turn"])
    assert {tok.eos_token_id, eot} <= set(gen.eos_token_id) and gen.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == gen.eos_token_id and gen.bos_token_id == tok.bos_token_id
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "ANSWER: 4"}]
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    if tok.bos_token_id is not None and "bos_token" in templates.load_family(family_of(name)).source:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # exactly one BOS
    assert eot in ids


def test_deterministic(built, monkeypatch, tmp_path):
    monkeypatch.setenv("FTCLI_CACHE", str(tmp_path))
    for name, first in built.items():
        second = builtin_path(name)
        assert second != first and second.name == first.name
        a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
            assert (first / f).read_bytes() == (second / f).read_bytes(), (name, f)


def test_building_leaves_the_global_rng_alone(monkeypatch, tmp_path):
    """A cold cache must not shift what a caller seeded before builtin_path() draws next (its LoRA init, say)."""
    monkeypatch.setenv("FTCLI_CACHE", str(tmp_path))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    builtin_path("builtin:tiny-qwen3")
    assert torch.equal(torch.get_rng_state(), state)


def test_cached(built, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("rebuilt a cached builtin")

    weights = built["tiny-qwen3"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    monkeypatch.setattr(builtin, "_build", fail)
    assert builtin_path("builtin:tiny-qwen3") == built["tiny-qwen3"] == builtin_path("tiny-qwen3")
    assert weights.stat().st_mtime_ns == before


def test_lost_race_keeps_the_winner(built, monkeypatch, tmp_path):
    """Another process finishes first: ours is discarded, theirs is returned, no temp dir stays."""
    import shutil

    monkeypatch.setenv("FTCLI_CACHE", str(tmp_path))
    target = tmp_path / "builtin" / built["tiny-phi3"].name
    real = builtin._build

    def racing(spec, meta, template, out):
        real(spec, meta, template, out)
        shutil.copytree(built["tiny-phi3"], target)
        (target / "winner").write_text("")

    monkeypatch.setattr(builtin, "_build", racing)
    assert builtin_path("tiny-phi3") == target and (target / "winner").exists()
    assert [p.name for p in (tmp_path / "builtin").iterdir()] == [target.name]
