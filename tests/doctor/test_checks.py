"""One failing fixture per doctor check, each built from a healthy builtin model by breaking one
thing; healthy builtins stay silent; every fixable file finding is gone after --fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers.doctor import CHATML, FOLDER_BREAKERS, broken_folder, copy_builtin, edit_json, ids, live, write_gguf

from ftcli import doctor
from ftcli.models.builtin import BUILTINS
from ftcli.doctor import CHECKS, probes
from ftcli.doctor.checks_tokenizer_files import MISTRAL_REGEX

CATALOGUE = Path(__file__).resolve().parents[3] / "shared" / "research" / "doctor-bugs.md"


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


def test_gguf_token_type_fires_on_a_normal_typed_end_of_turn(tmp_path):
    import gguf

    healthy = doctor.diagnose(str(write_gguf(tmp_path / "ok.gguf")))
    assert "gguf-token-type" not in ids(healthy.findings)
    assert not healthy.errors, [(f.check, f.message) for f in healthy.findings]
    broken = doctor.diagnose(str(write_gguf(tmp_path / "bad.gguf", {"<|eot_id|>": gguf.TokenType.NORMAL})))
    assert "gguf-token-type" in ids(broken.findings, "error")


def test_gguf_double_bos_and_end_of_turn(tmp_path):
    report = doctor.diagnose(str(write_gguf(tmp_path / "m.gguf")))
    assert "double-bos" in ids(report.findings, "warning")  # X05: add_bos_token and a template that prints bos
    assert "double-bos" not in ids(doctor.diagnose(str(write_gguf(tmp_path / "n.gguf", add_bos=False))).findings)


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
    text = (Path(__file__).resolve().parents[2] / "docs" / "doctor.md").read_text(encoding="utf-8")
    missing = [c for c in CHECKS if f"| `{c}` |" not in text]
    assert not missing, missing
