"""One failing fixture per doctor check, each built from a healthy builtin model by breaking one
thing; healthy builtins stay silent; every fixable file finding is gone after --fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from test_doctor_helpers import builtin_dir, copy_builtin, edit_json, ids

from ftcli import doctor
from ftcli.models.builtin import BUILTINS
from ftcli.doctor import CHECKS, probes
from ftcli.doctor.checks_tokenizer_files import MISTRAL_REGEX

CATALOGUE = Path(__file__).resolve().parents[2] / "shared" / "research" / "doctor-bugs.md"

CHATML_NO_AGP = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n'}}{% endfor %}")
CHATML = CHATML_NO_AGP + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
LLAMA3_ORIGINAL = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def set_template(folder: Path, source):
    edit_json(folder / "tokenizer_config.json", lambda d: d.__setitem__("chat_template", source))


def sub_template(folder: Path, old: str, new: str, count: int = 0):
    def edit(d):
        assert old in d["chat_template"], old
        d["chat_template"] = d["chat_template"].replace(old, new, count or -1)
    edit_json(folder / "tokenizer_config.json", edit)


def live(name: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcli.data import templates

    folder = builtin_dir(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok, templates.resolve("auto", tok)


# --------------------------------------------------------------------------- breakers (folder)
# check id -> (builtin, function(folder) that breaks exactly one thing)
def _no_pad(f):
    edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__("pad_token", None))
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.pop("pad_token_id", None))


def _zero_row(token: str):
    def breaker(f):
        from safetensors.torch import load_file, save_file
        from tokenizers import Tokenizer

        i = Tokenizer.from_file(str(f / "tokenizer.json")).token_to_id(token)
        tensors = load_file(str(f / "model.safetensors"))
        name = next(n for n in tensors if n.endswith("embed_tokens.weight"))
        tensors[name][i] = 0
        save_file(tensors, str(f / "model.safetensors"), metadata={"format": "pt"})
    return breaker


def _untie(f):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(f / "model.safetensors"))
    emb = next(t for n, t in tensors.items() if n.endswith("embed_tokens.weight"))
    tensors["lm_head.weight"] = emb + 0.5
    save_file(tensors, str(f / "model.safetensors"), metadata={"format": "pt"})


def _not_special(token):
    def breaker(f):
        def tj(d):
            for e in d["added_tokens"]:
                if e["content"] == token:
                    e["special"] = False
        edit_json(f / "tokenizer.json", tj)

        def tc(d):
            for e in d["added_tokens_decoder"].values():
                if e["content"] == token:
                    e["special"] = False
        edit_json(f / "tokenizer_config.json", tc)
    return breaker


def _rename_decoder(f):
    def tc(d):
        for e in d["added_tokens_decoder"].values():
            if e["content"] == "<|im_start|>":
                e["content"] = "<|im_begin|>"
    edit_json(f / "tokenizer_config.json", tc)


def _stale_pp(f):
    edit_json(f / "tokenizer.json", lambda d: d["post_processor"]["special_tokens"]["<|begin_of_text|>"]
              .__setitem__("ids", [5]))


def _no_bos_gemma(f):
    edit_json(f / "tokenizer.json", lambda d: d.__setitem__("post_processor", None))
    edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__("add_bos_token", False))
    sub_template(f, "{{ bos_token }}", "")


def _llama31_with_llama3_stops(f):
    from ftcli.data import templates

    set_template(f, templates.load_family("llama3.1").source)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(f / "tokenizer.json"))
    stops = [tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")]
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.__setitem__("eos_token_id", stops))


def _phi3_eos_only(f):
    for name in ("config.json", "generation_config.json"):
        edit_json(f / name, lambda d: d.__setitem__("eos_token_id", [d["eos_token_id"][0]]))


def _wrong_regex(f):
    edit_json(f / "tokenizer.json", lambda d: d.__setitem__("pre_tokenizer", {
        "type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))


def _rope_no_factor(f):
    edit_json(f / "config.json", lambda d: d["rope_parameters"].pop("factor"))


def _gemma2(f):
    edit_json(f / "config.json", lambda d: d.update(model_type="gemma2", num_hidden_layers=42,
                                                    query_pre_attn_scalar=224))


FOLDER_BREAKERS = {
    "pad-missing": ("tiny-llama3", _no_pad),
    "pad-is-eos": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json",
                                                      lambda d: d.__setitem__("pad_token", "<|im_end|>"))),
    "pad-out-of-range": ("tiny-llama3", lambda f: edit_json(f / "config.json",
                                                             lambda d: d.__setitem__("pad_token_id", 99999))),
    "eos-not-end-of-turn": ("tiny-phi3", _phi3_eos_only),
    "stop-tokens-incomplete": ("tiny-llama3", _llama31_with_llama3_stops),
    "double-bos": ("tiny-llama3", lambda f: sub_template(f, "bos_token + content", "bos_token + bos_token + content")),
    "missing-bos": ("tiny-gemma3", _no_bos_gemma),
    "post-processor-mismatch": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json",
                                                                    lambda d: d.__setitem__("add_bos_token", False))),
    "post-processor-stale": ("tiny-llama3", _stale_pp),
    "tokenizer-files-disagree": ("tiny-qwen3", _rename_decoder),
    "special-token-missing": ("tiny-phi3", lambda f: edit_json(f / "tokenizer_config.json",
                                                                lambda d: d.__setitem__("unk_token", "<unknown>"))),
    "vocab-size-mismatch": ("tiny-qwen3", lambda f: edit_json(f / "config.json",
                                                               lambda d: d.__setitem__("vocab_size", 1000))),
    "special-token-not-special": ("tiny-qwen3", _not_special("<|im_end|>")),
    "template-unknown-special": ("tiny-gemma3", lambda f: sub_template(f, "'<end_of_turn>\n'", "'<end_of_turns>\n'")),
    "legacy-tokenizer": ("tiny-mistral", lambda f: edit_json(f / "tokenizer.json", lambda d: d.__setitem__(
        "normalizer", {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}))),
    "mistral-regex": ("tiny-mistral", _wrong_regex),
    "add-bos-without-bos": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json",
                                                               lambda d: d.__setitem__("add_bos_token", True))),
    "template-missing": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json", lambda d: d.pop("chat_template"))),
    "template-variants": ("tiny-qwen3", lambda f: edit_json(f / "tokenizer_config.json", lambda d: d.__setitem__(
        "chat_template", [{"name": "default", "template": d["chat_template"]}, {"name": "tool_use", "template": CHATML}]))),
    "template-render-error": ("tiny-qwen3", lambda f: set_template(f, "{% for m in messages %}{{ m.content | nosuch }}{% endfor %}")),
    "template-no-generation-prompt": ("tiny-qwen3", lambda f: set_template(f, CHATML_NO_AGP)),
    "template-header-every-turn": ("tiny-llama3", lambda f: set_template(f, LLAMA3_ORIGINAL)),
    "template-no-end-of-turn": ("tiny-qwen3", lambda f: set_template(f, CHATML.replace("'<|im_end|>' + ", ""))),
    "template-drops-system": ("tiny-qwen3", lambda f: set_template(
        f, CHATML.replace("{{'<|im_start|>'", "{% if message['role'] != 'system' %}{{'<|im_start|>'").replace(
            "{% endfor %}", "{% endif %}{% endfor %}"))),
    "template-strict-alternation": ("tiny-qwen3", lambda f: set_template(
        f, "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('roles must alternate') }}{% endif %}" + CHATML[len("{% for message in messages %}"):])),
    "template-strips-reasoning": ("tiny-llama3", lambda f: sub_template(
        f, "message['content'] | trim", "message['content'].split('</think>')[-1] | trim")),
    "template-prefills-think": ("tiny-qwen3", lambda f: set_template(
        f, CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"))),
    "template-not-prefix-preserving": ("tiny-llama3", lambda f: sub_template(
        f, "' }}{% endif %}", "' }}{% else %}{{ eos_token }}{% endif %}")),
    "template-default-system": ("tiny-qwen3", lambda f: set_template(
        f, "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant named "
           "Tiny.<|im_end|>\\n' }}{% endif %}" + CHATML)),
    "template-date": ("tiny-qwen3", lambda f: set_template(
        f, "{{ '<|im_start|>system\\nToday is ' + strftime_now('%d %b %Y') + '<|im_end|>\\n' }}" + CHATML)),
    "gemma-turn-typo": ("tiny-gemma3", lambda f: sub_template(f, "{{'<start_of_turn>model", "{{'<end_of_turn>model")),
    "gemma-activation": ("tiny-gemma3", lambda f: edit_json(f / "config.json",
                                                             lambda d: d.__setitem__("hidden_activation", "gelu"))),
    "gemma2-query-scale": ("tiny-gemma3", _gemma2),
    "rope-scaling": ("tiny-llama3", _rope_no_factor),
    "max-length": ("tiny-llama3", lambda f: edit_json(f / "tokenizer_config.json",
                                                       lambda d: d.__setitem__("model_max_length", 1e30))),
    "tied-embeddings": ("tiny-qwen3", _untie),
    "untrained-special-tokens": ("tiny-llama3", _zero_row("<|eot_id|>")),
}


def broken_folder(check_id: str, tmp_path: Path) -> Path:
    name, breaker = FOLDER_BREAKERS[check_id]
    folder = copy_builtin(name, tmp_path / f"{name}-broken")
    breaker(folder)
    return folder


@pytest.mark.parametrize("check_id", sorted(FOLDER_BREAKERS))
def test_check_fires_on_its_broken_builtin(check_id, tmp_path):
    report = doctor.diagnose(str(broken_folder(check_id, tmp_path)))
    assert check_id in ids(report.findings), [(f.check, f.message) for f in report.findings]


FIXABLE_IN_FILES = sorted(c for c in FOLDER_BREAKERS if CHECKS[c].fixable
                          and c not in ("template-drops-system",))  # only ftcli's training can fold system turns


@pytest.mark.parametrize("check_id", FIXABLE_IN_FILES)
def test_fix_writes_a_folder_the_doctor_finds_healthy(check_id, tmp_path):
    folder = broken_folder(check_id, tmp_path)
    out = tmp_path / "fixed"
    report = doctor.diagnose(str(folder), fix_dir=str(out))
    assert check_id in report.fixed, [(f.check, f.fixable, f.message) for f in report.findings]
    again = doctor.diagnose(str(out))
    assert check_id not in ids(again.findings), [(f.check, f.message) for f in again.findings]
    assert not set(report.fixed) & ids(again.findings)  # none of the fixed findings come back
    assert folder.is_dir() and (folder / "tokenizer_config.json").is_file()  # never in place


# --------------------------------------------------------------------------- breakers (live objects)
def test_roundtrip_fires_when_the_normaliser_loses_text():
    from tokenizers import normalizers

    model, tok, template = live("tiny-llama3")
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    hit = next(f for f in doctor.check(model, tok, template) if f.check == "roundtrip")
    assert hit.severity == "error" and not hit.fixable and "Hello" in hit.message


def test_embed_scale_precision_fires_in_bf16():
    model, tok, template = live("tiny-gemma3", torch.bfloat16)
    hit = next(f for f in doctor.check(model, tok, template) if f.check == "embed-scale-precision")
    assert "sqrt(72)" in hit.message


def test_norm_offset_precision_fires_on_a_bf16_norm():
    model, tok, template = live("tiny-gemma3", torch.bfloat16)
    assert "norm-offset-precision" not in ids(doctor.check(model, tok, template))  # transformers' norm is right
    norm = model.model.layers[0].input_layernorm

    def bf16_forward(x, self=norm):  # what a careless kernel does: (1 + w) in bf16
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    norm.forward = bf16_forward
    hit = next(f for f in doctor.check(model, tok, template) if f.check == "norm-offset-precision")
    assert "layers.0.input_layernorm" in hit.message


def test_softcapping_attention_fires_with_sdpa():
    model, tok, template = live("tiny-gemma3")
    model.config.attn_logit_softcapping = 50.0
    model.config._attn_implementation = "sdpa"
    assert "softcapping-attention" in ids(doctor.check(model, tok, template), "error")
    _, fixed = doctor.fix(model, tok, template, doctor.check(model, tok, template))
    assert "softcapping-attention" in fixed and model.config._attn_implementation == "eager"
    assert "softcapping-attention" not in ids(doctor.check(model, tok, template))


def test_fp16_overflow_fires_on_gemma3_in_float16():
    model, tok, template = live("tiny-gemma3", torch.float16)
    assert "fp16-overflow" in ids(doctor.check(model, tok, template), "error")


def test_chat_template_mask_fires_when_the_prompt_prefill_breaks_masks():
    from ftcli.data import templates

    model, tok, template = live("tiny-qwen3")
    broken = templates.ChatTemplate("prefill", CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"),
                               "<|im_end|>", ("<|im_end|>",))
    hit = next(f for f in doctor.check(model, tok, broken) if f.check == "chat-template-mask")
    assert "cannot build the loss mask" in hit.message


def test_chat_template_mask_fires_when_nothing_is_trained():
    from ftcli import recipe as recipe_mod

    model, tok, template = live("tiny-qwen3")
    recipe = recipe_mod.Recipe.model_validate({"model": {"name": "builtin:tiny-qwen3", "max_seq_length": 4},
                                               "dataset": {"path": "x.jsonl"}})
    hit = next(f for f in doctor.check(model, tok, template, recipe) if f.check == "chat-template-mask")
    assert "no assistant token is trained" in hit.message


def test_template_trims_content_fires_only_with_whitespace_in_the_data():
    model, tok, template = live("tiny-gemma3")
    rows = [{"messages": [{"role": "user", "content": "  indented code\n"}, {"role": "assistant", "content": "ok"}]}]
    assert "template-trims-content" not in ids(doctor.check(model, tok, template))
    assert "template-trims-content" in ids(doctor.check(model, tok, template, samples=rows))
    model, tok, template = live("tiny-phi3")  # keeps whitespace
    assert "template-trims-content" not in ids(doctor.check(model, tok, template, samples=rows))


def test_template_strips_reasoning_is_an_error_when_the_data_has_reasoning():
    model, tok, template = live("tiny-qwen3")
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>r</think>a"}]}]
    assert "template-strips-reasoning" in ids(doctor.check(model, tok, template), "warning")
    assert "template-strips-reasoning" in ids(doctor.check(model, tok, template, samples=rows), "error")


def _write_gguf(path: Path, types_override: dict[str, int] | None = None, add_bos: bool = True):
    import gguf
    from tokenizers import Tokenizer

    folder = builtin_dir("tiny-llama3")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    special = {a.content for a in tok.get_added_tokens_decoder().values()}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    for t, kind in (types_override or {}).items():
        types[tokens.index(t)] = kind
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(131072)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    writer.add_eos_token_id(tokens.index("<|eot_id|>"))
    writer.add_add_bos_token(add_bos)
    from ftcli.data import templates

    writer.add_chat_template(templates.load_family("llama3").source)
    writer.add_tensor("token_embd.weight", torch.randn(len(tokens), 8, generator=torch.Generator().manual_seed(0)).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_token_type_fires_on_a_normal_typed_end_of_turn(tmp_path):
    import gguf

    healthy = doctor.diagnose(str(_write_gguf(tmp_path / "ok.gguf")))
    assert "gguf-token-type" not in ids(healthy.findings)
    assert not healthy.errors, [(f.check, f.message) for f in healthy.findings]
    broken = doctor.diagnose(str(_write_gguf(tmp_path / "bad.gguf", {"<|eot_id|>": gguf.TokenType.NORMAL})))
    assert "gguf-token-type" in ids(broken.findings, "error")


def test_gguf_double_bos_and_end_of_turn(tmp_path):
    report = doctor.diagnose(str(_write_gguf(tmp_path / "m.gguf")))
    assert "double-bos" in ids(report.findings, "warning")  # X05: add_bos_token and a template that prints bos
    assert "double-bos" not in ids(doctor.diagnose(str(_write_gguf(tmp_path / "n.gguf", add_bos=False))).findings)


# --------------------------------------------------------------------------- healthy builtins
# Findings the builtins show on purpose: they reproduce the released templates and tokenizers.
EXPECTED_ON_BUILTINS = {
    "double-bos": {"tiny-llama3", "tiny-gemma3", "tiny-mistral"},  # T06: release layout; ftcli's encode is unaffected
    "template-strict-alternation": {"tiny-gemma3", "tiny-mistral"},
    "template-drops-system": {"tiny-mistral"},  # info: refuses system; ftcli folds it into the user turn
    "template-strips-reasoning": {"tiny-qwen3"},  # C06: Qwen3 drops reasoning in history
    "template-not-prefix-preserving": {"tiny-qwen3", "tiny-phi3"},  # C08
}


@pytest.fixture(scope="module")
def builtin_reports():
    out = {}
    for name in BUILTINS:
        model, tok, template = live(name)
        out[name] = (doctor.diagnose(f"builtin:{name}").findings, doctor.check(model, tok, template))
    return out


@pytest.mark.parametrize("name", BUILTINS)
def test_healthy_builtins_have_no_errors(name, builtin_reports):
    for findings in builtin_reports[name]:
        assert not [f for f in findings if f.severity == "error"], [(f.check, f.message) for f in findings]
        unexpected = {f.check for f in findings} - {c for c, names in EXPECTED_ON_BUILTINS.items() if name in names}
        assert not unexpected, [(f.check, f.message) for f in findings if f.check in unexpected]


def test_every_check_has_a_failing_fixture_and_a_catalogue_row():
    tested = set(FOLDER_BREAKERS) | {"roundtrip", "embed-scale-precision", "norm-offset-precision",
                                     "softcapping-attention", "fp16-overflow", "chat-template-mask",
                                     "template-trims-content", "gguf-token-type"}
    assert set(CHECKS) <= tested, set(CHECKS) - tested
    assert len(CHECKS) >= 25
    required = {"double-bos", "missing-bos", "pad-is-eos", "pad-missing", "eos-not-end-of-turn", "template-missing",
                "template-no-generation-prompt", "template-header-every-turn", "template-unknown-special",
                "template-render-error", "untrained-special-tokens", "vocab-size-mismatch",
                "special-token-not-special", "roundtrip", "embed-scale-precision", "norm-offset-precision",
                "rope-scaling", "max-length", "chat-template-mask"}
    assert required <= set(CHECKS)
    rows = set(re.findall(r"^\| ([TCNEX]\d\d) \|", CATALOGUE.read_text(encoding="utf-8"), re.M)) if CATALOGUE.is_file() else None
    for c in CHECKS.values():
        cited = re.findall(r"[TCNEX]\d\d", c.row)
        assert cited, c.id
        if rows is not None:
            assert set(cited) <= rows, (c.id, c.row)
        assert c.fix and "\n" not in c.fix and c.severity in ("error", "warning", "info")


def test_double_bos_is_an_error_only_when_ftcli_itself_would_double(tmp_path):
    report = doctor.diagnose(str(broken_folder("double-bos", tmp_path)))
    assert "double-bos" in ids(report.findings, "error")
    healthy = doctor.diagnose("builtin:tiny-llama3")
    assert "double-bos" in ids(healthy.findings, "warning") and not healthy.errors


def test_rope_scaling_catches_deleted_llama31_scaling(tmp_path):
    folder = copy_builtin("tiny-llama3", tmp_path / "m")
    edit_json(folder / "config.json", lambda d: d.__setitem__("rope_parameters", {"rope_type": "default",
                                                                                  "rope_theta": 500000.0}))
    hit = next(f for f in doctor.diagnose(str(folder)).findings if f.check == "rope-scaling")
    assert "without llama3 rope scaling" in hit.message


def test_special_token_not_special_tolerates_qwen_think_tokens():
    report = doctor.diagnose("builtin:tiny-qwen3")  # <think>, <tool_call> are special: false by design
    assert "special-token-not-special" not in ids(report.findings)


def test_untrained_tokens_on_untied_duplicate_lm_head_rows(tmp_path):
    """Llama-3.1 base: lm_head rows of the chat tokens are identical rather than zero."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    folder = copy_builtin("tiny-phi3", tmp_path / "m")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    a, b = tok.token_to_id("<|end|>"), tok.token_to_id("<|assistant|>")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["lm_head.weight"][b] = tensors["lm_head.weight"][a]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hit = next(f for f in doctor.diagnose(str(folder)).findings if f.check == "untrained-special-tokens")
    assert "lm_head row equals" in hit.message


def test_mistral_regex_constant_is_the_corrected_pattern():
    assert r"[\r\n/]*" in MISTRAL_REGEX and MISTRAL_REGEX.endswith(r"\s+(?!\S)|\s+")


def test_probe_markers_prefer_the_longest_token():
    text = "x<|im_end|>\n<|im_start|>assistant"
    assert [m for _, m in probes.markers(text, ["<|im_end|>", "<|im_start|>"])] == ["<|im_end|>", "<|im_start|>"]


def test_docs_list_every_check():
    text = (Path(__file__).resolve().parents[1] / "docs" / "doctor.md").read_text(encoding="utf-8")
    missing = [c for c in CHECKS if f"| `{c}` |" not in text]
    assert not missing, missing
