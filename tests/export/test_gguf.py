"""GGUF writer: every builtin family (and the other supported shapes) loads in llama.cpp and
gives the Hugging Face model's logits; tokenisation matches; metadata is what llama.cpp expects."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

import gguf  # noqa: E402

from ftcli.models import builtin  # noqa: E402
from ftcli.data import templates
from ftcli.errors import BadInput  # noqa: E402
from ftcli.export import gguf as writer  # noqa: E402
from ftcli.export import gguf_tensors  # noqa: E402
from ftcli.export import quantize, verify  # noqa: E402
from helpers.exports import builtin_dir, other_shape, template_of  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """f16 and q8_0 GGUF of every builtin, plus the HF reference logits (computed once)."""
    out = {}
    root = tmp_path_factory.mktemp("gguf")
    for name in builtin.BUILTINS:
        template = template_of(name)
        f16 = root / f"{name}-f16.gguf"
        info = writer.write_gguf(builtin_dir(name), f16, "f16", chat_template=template.source,
                                 end_of_turn=template.end_of_turn, stop_tokens=list(template.stop_tokens),
                                 template_name=template.name, name=name)
        q8 = quantize.quantize(f16, root / f"{name}-q8_0.gguf", "q8_0")
        out[name] = (info, q8, verify.build_reference(builtin_dir(name), template))
    return out


@pytest.mark.parametrize("name", builtin.BUILTINS)
def test_f16_and_q8_0_give_the_hf_logits(exported, name):
    info, q8, ref = exported[name]
    f16 = verify.compare_logits(ref, info.path)
    verify.check_base(f16, info.path.name)  # the gate export uses
    assert f16["nmse"] < 1e-4 and f16["top1_agreement"] >= 0.95 and f16["max_abs_diff"] < 0.05, f16
    q8_figures = verify.compare_logits(ref, q8.path)
    assert q8_figures["nmse"] < 2e-2 and q8_figures["kl_mean"] < 2e-2, q8_figures


@pytest.mark.parametrize("name", builtin.BUILTINS)
def test_llama_cpp_tokenizes_like_hf(exported, name):
    info, _, ref = exported[name]
    result = verify.compare_tokenization(ref, info.path)
    assert result["chat_match"], result
    special = [s for s in result["samples"] if s["kind"] == "special"]
    assert special and all(s["match"] for s in special), special
    for sample in result["samples"]:
        if sample["match"]:
            continue
        # The one known difference: a SentencePiece tokenizer with prepend_scheme "first"
        # (legacy=False) puts "▁" before a text's first word; llama.cpp cannot do that and
        # also match after special tokens, so plain texts differ in that one token only.
        assert info.tokenizer_model == "llama" and sample["kind"] in ("plain", "multilingual"), sample
        assert sample["first_difference"]["position"] <= 1, sample


@pytest.mark.parametrize("kind", ["qwen2", "phi4-mini", "llama-linear-rope"])
def test_other_supported_shapes_give_the_hf_logits(tmp_path, kind):
    from transformers import AutoTokenizer

    folder = other_shape(kind, tmp_path / kind)
    template = templates.resolve("auto", AutoTokenizer.from_pretrained(folder))
    info = writer.write_gguf(folder, tmp_path / "m.gguf", "f16", chat_template=template.source)
    figures = verify.compare_logits(verify.build_reference(folder, template), info.path)
    assert figures["nmse"] < 1e-4 and figures["top1_agreement"] >= 0.95, (kind, figures)


def _fields(path):
    from ftcli.export.chat_session import field_value

    reader = gguf.GGUFReader(str(path))
    return {k: field_value(f) for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_llama3_metadata(exported):
    info, _, ref = exported["tiny-llama3"]
    kv, tensors = _fields(info.path)
    config = json.loads((builtin_dir("tiny-llama3") / "config.json").read_text())
    assert kv["general.architecture"] == "llama" and kv["general.file_type"] == 1
    assert kv["llama.block_count"] == config["num_hidden_layers"]
    assert kv["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert kv["llama.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    assert kv["llama.rope.dimension_count"] == kv["llama.attention.key_length"] == config["head_dim"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "llama-bpe"
    assert kv["tokenizer.ggml.add_bos_token"] is True or kv["tokenizer.ggml.add_bos_token"] == 1
    assert kv["tokenizer.chat_template"] == template_of("tiny-llama3").source
    assert kv["tokenizer.ggml.eot_token_id"] == ref.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert kv[writer.STOP_KEY] == list(template_of("tiny-llama3").stop_tokens)
    assert len(kv["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert "rope_freqs.weight" in tensors  # llama3 rope scaling
    assert "output.weight" not in tensors  # tied embeddings
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16


def test_transforms_gemma_norms_llama_qk_phi3_fused(exported):
    from safetensors.torch import load_file

    kv, tensors = _fields(exported["tiny-gemma3"][0].path)
    hf = load_file(builtin_dir("tiny-gemma3") / "model.safetensors")
    assert np.allclose(tensors["blk.0.attn_norm.weight"].data, hf["model.layers.0.input_layernorm.weight"] + 1)
    assert np.allclose(tensors["blk.1.post_attention_norm.weight"].data,
                       hf["model.layers.1.post_attention_layernorm.weight"] + 1)
    assert kv["gemma3.attention.sliding_window"] == 16 and kv["gemma3.rope.freq_base_swa"] == 10000.0
    assert kv["gemma3.attention.sliding_window_pattern"] == [True, True, True, False]
    assert kv["tokenizer.ggml.add_space_prefix"] in (False, 0)

    _, tensors = _fields(exported["tiny-llama3"][0].path)
    hf = load_file(builtin_dir("tiny-llama3") / "model.safetensors")
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    ours = torch.tensor(np.array(tensors["blk.0.attn_q.weight"].data, dtype=np.float32))
    assert not torch.allclose(ours, q, atol=1e-3)  # reordered rows ...
    assert torch.allclose(ours, gguf_tensors.permute_rows(q, 6).half().float())  # ... by the rotate-half permutation

    _, tensors = _fields(exported["tiny-phi3"][0].path)
    assert "blk.0.attn_qkv.weight" in tensors and "blk.0.attn_q.weight" not in tensors
    assert "output.weight" in tensors  # untied


@pytest.mark.parametrize("broken", ["no q/k permutation", "no gemma norm offset"])
def test_the_parity_gate_catches_a_converter_bug(tmp_path, monkeypatch, broken):
    name = "tiny-llama3" if broken == "no q/k permutation" else "tiny-gemma3"
    if broken == "no q/k permutation":
        monkeypatch.setattr(gguf_tensors, "permute_rows", lambda t, heads: t)
    else:
        original = writer.transform
        monkeypatch.setattr(writer, "transform", lambda arch, g, t, c: t if g.endswith("norm.weight")
                            else original(arch, g, t, c))
    template = template_of(name)
    info = writer.write_gguf(builtin_dir(name), tmp_path / "bad.gguf", "f16", chat_template=template.source)
    figures = verify.compare_logits(verify.build_reference(builtin_dir(name), template), info.path)
    with pytest.raises(verify.ParityFailed, match="does not reproduce"):
        verify.check_base(figures, "bad.gguf")


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(BadInput) as err:
        writer.write_gguf(tmp_path, tmp_path / "x.gguf")
    assert "GPT2LMHeadModel" in err.value.message and "Gemma3ForCausalLM" in err.value.hint
    assert err.value.exit_code == 2


def test_an_unmerged_adapter_is_refused(tmp_path):
    from safetensors.torch import save_file

    folder = builtin_dir("tiny-llama3")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4),
               "model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(BadInput, match="lora_A") as err:
        writer.write_gguf(tmp_path, tmp_path / "x.gguf")
    assert "merge" in err.value.hint
