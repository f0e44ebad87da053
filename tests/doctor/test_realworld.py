"""The doctor on every real released template and tokenizer file in shared/fixtures/real-world/:
for each release research/doctor-bugs.md names as buggy, the matching check fires; on the fixed
revisions it is silent; nothing raises on odd but valid files."""

from __future__ import annotations

import pytest

from helpers.doctor import TEMPLATE_CONTEXT, fixtures_dir, ids, template_subject

from ftcli import doctor

# template fixture -> (checks that must fire, checks that must stay silent), per the catalogue rows.
TEMPLATE_EXPECT = {
    "llama-3-instruct.2024-04-original.jinja": ({"template-header-every-turn", "eos-not-end-of-turn", "double-bos"},
                                                set()),  # C02, T04/T05 (first generation_config), T06
    "llama-3-instruct.jinja": ({"double-bos"}, {"template-header-every-turn", "eos-not-end-of-turn",
                                                "template-no-generation-prompt"}),
    "llama-3.1-instruct.jinja": ({"template-default-system", "double-bos"}, {"stop-tokens-incomplete",
                                                                             "eos-not-end-of-turn"}),  # C11
    "llama-3.3-instruct.jinja": ({"template-default-system"}, {"stop-tokens-incomplete"}),
    "llama-3.2-instruct.jinja": ({"template-date", "template-default-system"}, set()),  # C11 strftime_now
    "llama-4-instruct.jinja": (set(), {"template-header-every-turn", "eos-not-end-of-turn"}),
    "phi-3-mini-128k-instruct.2024-04-original.jinja": ({"template-header-every-turn", "template-drops-system",
                                                         "double-bos", "pad-is-eos", "eos-not-end-of-turn"}, set()),
    "phi-3-mini-4k-instruct.jinja": ({"pad-is-eos", "eos-not-end-of-turn", "template-not-prefix-preserving"},
                                     {"template-header-every-turn", "template-drops-system", "double-bos"}),
    "phi-3.5-mini-instruct.jinja": ({"pad-is-eos", "eos-not-end-of-turn"}, {"template-header-every-turn"}),
    "phi-4.2024-12-original.jinja": ({"template-header-every-turn", "pad-is-eos", "eos-not-end-of-turn"}, set()),
    "phi-4.jinja": (set(), {"template-header-every-turn", "pad-is-eos", "eos-not-end-of-turn",
                            "template-no-generation-prompt", "double-bos"}),
    "qwen2.5-instruct.jinja": ({"template-default-system"}, {"double-bos", "pad-is-eos", "eos-not-end-of-turn"}),
    "qwen3.jinja": ({"template-strips-reasoning", "template-not-prefix-preserving"},
                    {"template-prefills-think", "eos-not-end-of-turn", "pad-is-eos"}),  # C06 + C08
    "qwen3.2025-04-original.jinja": ({"template-strips-reasoning", "template-not-prefix-preserving"}, set()),
    "deepseek-r1-distill.jinja": ({"template-strips-reasoning", "template-prefills-think", "double-bos"}, set()),
    "deepseek-r1-distill.2025-01-original.jinja": ({"template-strips-reasoning", "double-bos"},
                                                   {"template-prefills-think"}),  # C07 came with the Feb update
    "mistral-nemo-instruct-2407.jinja": ({"template-drops-system", "template-not-prefix-preserving"}, set()),  # C04
    "mistral-small-3.2-24b-instruct-2506.jinja": ({"template-date", "template-default-system"}, set()),
    "mistral-7b-instruct-v0.3.jinja": ({"double-bos", "template-strict-alternation"},
                                       {"template-no-generation-prompt", "template-header-every-turn"}),
    "mistral-7b-instruct-v0.2.original.jinja": ({"template-strict-alternation"}, {"template-no-generation-prompt"}),
    "smollm2-instruct.jinja": ({"template-default-system", "pad-is-eos"}, set()),  # C11, T02 generation_config
    "chatml.jinja": (set(), {"template-no-generation-prompt", "template-header-every-turn", "eos-not-end-of-turn"}),
    "hermes-3-chatml-tool-use.jinja": ({"double-bos"}, {"template-header-every-turn"}),
    "gemma-2-it.jinja": ({"double-bos", "template-strict-alternation"}, {"eos-not-end-of-turn", "gemma-turn-typo"}),
    "gemma-3-it.jinja": ({"double-bos", "eos-not-end-of-turn"}, {"gemma-turn-typo", "template-drops-system"}),  # T05
}

# tokenizer folder -> (must fire, must stay silent)
TOKENIZER_EXPECT = {
    "phi-3-mini-128k-instruct.2024-04-original": ({"template-header-every-turn", "double-bos", "pad-is-eos",
                                                   "eos-not-end-of-turn", "template-drops-system"}, set()),
    "phi-3-mini-4k-instruct": ({"pad-is-eos", "eos-not-end-of-turn", "special-token-not-special", "legacy-tokenizer"},
                               {"template-header-every-turn", "double-bos", "post-processor-mismatch"}),
    "llama-2": ({"pad-missing", "legacy-tokenizer", "max-length"}, {"post-processor-mismatch", "double-bos"}),
    "gemma-2-it": ({"double-bos", "max-length"}, {"eos-not-end-of-turn", "special-token-not-special",
                                                  "gemma-turn-typo", "missing-bos"}),
    "gemma-3-it": ({"double-bos", "max-length", "eos-not-end-of-turn"}, {"special-token-not-special", "missing-bos"}),
    "gemma-it": ({"double-bos", "max-length", "eos-not-end-of-turn"}, {"gemma-turn-typo"}),
    "gemma.cropped-derived": (set(), {"post-processor-stale", "post-processor-mismatch", "double-bos"}),
    "phi-4": (set(), {"pad-is-eos", "eos-not-end-of-turn", "template-header-every-turn", "double-bos"}),
    "qwen2.5-instruct": ({"template-default-system"}, {"special-token-not-special", "pad-is-eos", "double-bos",
                                                       "add-bos-without-bos"}),
    "qwen3": ({"template-strips-reasoning"}, {"special-token-not-special", "pad-is-eos", "eos-not-end-of-turn"}),
    # Full tokenizers added 2026-12-03 (INDEX.md section 3).
    "llama-3-8b-instruct": ({"pad-missing", "double-bos"}, {"eos-not-end-of-turn", "special-token-not-special"}),
    "qwen3-full": ({"template-strips-reasoning"}, {"special-token-not-special", "pad-is-eos", "eos-not-end-of-turn"}),
    "qwen2-instruct": (set(), {"special-token-not-special", "pad-is-eos", "double-bos", "eos-not-end-of-turn"}),
    "mistral-nemo-2407": ({"pad-missing"}, {"special-token-not-special", "eos-not-end-of-turn"}),
}


def test_every_fixture_file_is_covered():
    root = fixtures_dir()
    assert {p.name for p in (root / "templates").glob("*.jinja")} == set(TEMPLATE_EXPECT) == set(TEMPLATE_CONTEXT)
    assert {p.name for p in (root / "tokenizers").iterdir() if p.is_dir()} == set(TOKENIZER_EXPECT)


@pytest.mark.parametrize("name", sorted(TEMPLATE_EXPECT))
def test_released_template(name):
    fire, silent = TEMPLATE_EXPECT[name]
    found = ids(doctor.run(template_subject(name)))
    assert fire <= found, (name, fire - found)
    assert not silent & found, (name, silent & found)


@pytest.mark.parametrize("name", sorted(TOKENIZER_EXPECT))
def test_released_tokenizer_files(name):
    fire, silent = TOKENIZER_EXPECT[name]
    report = doctor.diagnose(str(fixtures_dir() / "tokenizers" / name))
    found = ids(report.findings)
    assert fire <= found, (name, fire - found)
    assert not silent & found, (name, silent & found)
    assert not any("could not run" in f.message for f in report.findings)


def test_fixed_phi4_tokenizer_is_clean():
    report = doctor.diagnose(str(fixtures_dir() / "tokenizers" / "phi-4"))
    assert not report.errors and report.exit_code == 0


def test_fix_cures_the_buggy_phi3_release(tmp_path):
    """The April-2024 Phi-3 files: --fix moves the header into add_generation_prompt, re-pads, adds <|end|>."""
    src = fixtures_dir() / "tokenizers" / "phi-3-mini-128k-instruct.2024-04-original"
    out = tmp_path / "fixed"
    report = doctor.diagnose(str(src), fix_dir=str(out))
    assert {"template-header-every-turn", "pad-is-eos", "eos-not-end-of-turn"} <= set(report.fixed)
    again = ids(doctor.diagnose(str(out)).findings)
    assert not set(report.fixed) & again, again
    from ftcli.doctor import probes, targets

    fixed = targets.from_folder(out)
    assert fixed.render(probes.U, True).endswith("<|assistant|>\n")  # the prompt still gets its header
    assert not fixed.render(probes.U, False).rstrip().endswith("<|assistant|>")


def test_fix_replaces_the_original_phi4_template_with_the_fixed_release():
    from ftcli.doctor import fixes

    fixed_source = (fixtures_dir() / "templates" / "phi-4.jinja").read_text(encoding="utf-8")
    subject = template_subject("phi-4.2024-12-original.jinja")
    findings = doctor.run(subject)
    patch = fixes.plan(subject, findings)
    assert "template-header-every-turn" in patch.applied
    assert patch.template == fixed_source  # the shipped family template phi4.jinja renders identically


def test_odd_but_valid_inputs_do_not_raise(tmp_path):
    """AddedToken dicts, templates as lists of named templates, null bos, 1e30 lengths, tokenizer-only folders."""
    import json
    import shutil

    src = fixtures_dir() / "tokenizers"
    folder = tmp_path / "odd"
    shutil.copytree(src / "llama-2", folder)  # AddedToken dicts, pad null, 1e30 model_max_length
    hermes = (fixtures_dir() / "templates" / "hermes-3-chatml-tool-use.jinja").read_text(encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": hermes}, {"name": "tool_use", "template": hermes}]
    config["bos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    report = doctor.diagnose(str(folder))
    assert "template-variants" in ids(report.findings)
    assert any("embedding checks skipped" in n for n in report.notes)
