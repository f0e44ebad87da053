"""The doctor at training start (model.doctor: fix | warn | off): fixable findings are fixed in
memory and travel with everything the run saves; other errors stop the run with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers.doctor import CHATML, LLAMA3_ORIGINAL, broken_folder, live, not_special
from helpers.doctor import copy_builtin, ids

from ftcli.data import templates
from ftcli import doctor
from ftcli.recipe import Recipe


# ChatML whose user turn always ends with the assistant header (the Phi-4 December 2024 bug, C02).
ALWAYS_HEADER = ("{% for message in messages %}{% if message['role'] == 'user' %}{{'<|im_start|>user\n' + "
                 "message['content'] + '<|im_end|>\n<|im_start|>assistant\n'}}{% elif message['role'] == 'assistant' %}"
                 "{{ message['content'] + '<|im_end|>\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}")


def recipe(mode: str = "fix", **model) -> Recipe:
    return Recipe.model_validate({"model": {"name": "builtin:tiny-qwen3", "doctor": mode, **model},
                                  "dataset": {"path": "unused.jsonl"}})


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder), tok, templates.resolve("auto", tok)


def saved(tmp_path: Path, model, tokenizer, template, name="saved") -> Path:
    """What train.py saves: the tokenizer it holds (with the training template) and the model."""
    out = tmp_path / name
    model.save_pretrained(out)
    tokenizer.chat_template = template.source
    tokenizer.save_pretrained(out)
    return out


def test_pad_fix_travels_with_the_saved_tokenizer(tmp_path):
    model, tok, template = live("tiny-qwen3")
    tok.pad_token = tok.eos_token  # what models.load_tokenizer does for a tokenizer without pad
    logged = []
    tok2, template2, findings = doctor.run_for_training(model, tok, template, recipe(), logged.append)
    assert tok2 is tok and tok.pad_token != tok.eos_token
    fixed = [f for f in findings if f.check == "pad-is-eos"]
    assert fixed and fixed[0].data["fixed"] and any("(fixed) pad-is-eos" in line for line in logged)
    assert model.config.pad_token_id == tok.pad_token_id
    facts = doctor.as_facts(findings)
    assert {"check": "pad-is-eos", "severity": "error", "fixed": True}.items() <= next(
        f for f in facts if f["check"] == "pad-is-eos").items()
    again = doctor.diagnose(str(saved(tmp_path, model, tok, template2)))
    assert "pad-is-eos" not in ids(again.findings)


def test_template_and_special_flag_fixes_travel(tmp_path):
    folder = copy_builtin("tiny-qwen3", tmp_path / "m")
    not_special("<|im_start|>")(folder)  # not a named token, so transformers keeps the file's flag
    model, tok, _ = load(folder)
    template = templates.ChatTemplate("original", ALWAYS_HEADER, "<|im_end|>", ("<|im_end|>",))
    before = ids(doctor.check(model, tok, template))
    assert {"template-header-every-turn", "special-token-not-special"} <= before
    tok, template, findings = doctor.run_for_training(model, tok, template, recipe())
    assert template.source != ALWAYS_HEADER
    out = saved(tmp_path, model, tok, template)
    after = ids(doctor.diagnose(str(out)).findings)
    assert not {"template-header-every-turn", "special-token-not-special"} & after, after


def test_untrained_rows_are_reset_in_memory_and_saved(tmp_path):
    folder = broken_folder("untrained-special-tokens", tmp_path)
    model, tok, template = load(folder)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert model.get_input_embeddings().weight[eot].abs().max() == 0
    doctor.run_for_training(model, tok, template, recipe())
    assert model.get_input_embeddings().weight[eot].abs().max() > 0
    out = saved(tmp_path, model, tok, template)
    assert "untrained-special-tokens" not in ids(doctor.diagnose(str(out)).findings)


def test_missing_bos_fix_makes_ftcli_encode_start_with_bos(tmp_path):
    model, tok, template = load(broken_folder("missing-bos", tmp_path))
    assert templates.encode(template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                       tok)["input_ids"][0] != tok.bos_token_id
    tok, template, _ = doctor.run_for_training(model, tok, template, recipe())
    ids_ = templates.encode(template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)
    assert ids_["input_ids"][0] == tok.bos_token_id
    assert "missing-bos" not in ids(doctor.diagnose(str(saved(tmp_path, model, tok, template))).findings)


def test_reapply_restores_model_side_fixes_on_a_model_rebuilt_from_the_base(tmp_path):
    """A LoRA merge reloads the base: its zero rows and short eos list come back; reapply fixes them again."""
    folder = broken_folder("untrained-special-tokens", tmp_path)
    model, tok, template = load(folder)
    tok, template, _ = doctor.run_for_training(model, tok, template, recipe())
    merged, _, _ = load(folder)  # what merge_adapter starts from
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert merged.get_input_embeddings().weight[eot].abs().max() == 0
    assert "untrained-special-tokens" in doctor.reapply(merged, tok, template)
    assert torch.equal(merged.get_input_embeddings().weight[eot], model.get_input_embeddings().weight[eot])


def test_generation_config_gets_the_end_of_turn(tmp_path):
    model, tok, template = load(broken_folder("eos-not-end-of-turn", tmp_path))
    eot = tok.convert_tokens_to_ids("<|end|>")
    doctor.run_for_training(model, tok, template, recipe())
    assert eot in model.generation_config.eos_token_id
    out = saved(tmp_path, model, tok, template)
    assert eot in json.loads((out / "generation_config.json").read_text())["eos_token_id"]


def test_system_dropping_template_is_folded_at_training():
    model, tok, _ = live("tiny-qwen3")
    drops = CHATML.replace("{{'<|im_start|>'", "{% if message['role'] != 'system' %}{{'<|im_start|>'").replace(
        "{% endfor %}", "{% endif %}{% endfor %}")
    template = templates.ChatTemplate("drops", drops, "<|im_end|>", ("<|im_end|>",), True)
    _, template, findings = doctor.run_for_training(model, tok, template, recipe())
    assert template.supports_system is False  # data.fold_system moves the system text into the user turn
    assert next(f for f in findings if f.check == "template-drops-system").data["fixed"]


def test_unfixable_errors_stop_the_run_with_exit_code_1():
    model, tok, _ = live("tiny-gemma3")
    source = templates.load_family("gemma3").source.replace("'<end_of_turn>\n'", "'<end_of_turns>\n'")
    template = templates.ChatTemplate("typo", source, "<end_of_turn>", ("<end_of_turn>",))
    with pytest.raises(doctor.DoctorFailed) as err:
        doctor.run_for_training(model, tok, template, recipe())
    assert err.value.exit_code == 1 and "template-unknown-special" in err.value.message
    assert "model.doctor: warn" in err.value.hint


def test_warn_reports_without_changing_anything_and_off_skips():
    model, tok, template = live("tiny-qwen3")
    tok.pad_token = tok.eos_token
    logged = []
    _, _, findings = doctor.run_for_training(model, tok, template, recipe("warn"), logged.append)
    assert tok.pad_token == tok.eos_token and "pad-is-eos" in ids(findings)
    assert any("(error) pad-is-eos" in line for line in logged)
    assert doctor.run_for_training(model, tok, template, recipe("off"))[2] == []


def test_recipe_has_the_doctor_field():
    assert recipe().model.doctor == "fix"
    with pytest.raises(Exception):
        recipe("sometimes")


def test_ftcli_train_runs_the_doctor_and_the_fixes_reach_the_run_dir(tmp_path):
    """End to end: a template that always appends the assistant header is fixed before training."""
    from ftcli.runner import train

    template_file = tmp_path / "original.jinja"
    template_file.write_text(LLAMA3_ORIGINAL)
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                          {"role": "assistant", "content": f"ANSWER: {i + 1}"}]} for i in range(4)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import importlib.util

    exports = ["gguf", "ollama"] if importlib.util.find_spec("llama_cpp") else []
    r = Recipe.model_validate({
        "model": {"name": "builtin:tiny-llama3", "max_seq_length": 64},
        "template": {"name": str(template_file)}, "dataset": {"path": str(data)}, "lora": {"r": 4},
        "train": {"max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1},
        "export": {"formats": exports, "gguf_quant": ["q8_0"]}, "output_dir": str(tmp_path / "run")})
    result = train.run(r)
    manifest = yaml.safe_load((result.run_dir / "recipe.resolved.yaml").read_text())
    facts = {f["check"]: f for f in manifest["_run"]["doctor"]}
    assert facts["template-header-every-turn"]["fixed"] is True
    saved_dir = result.adapter_dir or result.model_dir
    saved_template = json.loads((saved_dir / "tokenizer_config.json").read_text()).get("chat_template") or \
        (saved_dir / "chat_template.jinja").read_text()
    assert saved_template != LLAMA3_ORIGINAL
    again = doctor.diagnose(str(result.run_dir))
    assert "template-header-every-turn" not in ids(again.findings)
    assert torch.isfinite(torch.tensor([m["loss"] for m in result.metrics if "loss" in m])).all()
    ggufs = list((result.run_dir / "export").glob("*.gguf"))
    assert bool(ggufs) == bool(exports)
    for gguf_file in ggufs:  # the fixed template reaches the GGUF and the Modelfile
        found = doctor.diagnose(str(gguf_file)).findings
        assert "template-header-every-turn" not in ids(found) and not [f for f in found if f.severity == "error"]
        assert (result.run_dir / "export" / "Modelfile").is_file()


def test_findings_that_cannot_affect_training_are_one_line_naming_ftcli_doctor():
    model, tok, template = live("tiny-llama3")  # its release layout has the double-bos warning
    logged = []
    _, _, findings = doctor.run_for_training(model, tok, template, recipe(), logged.append)
    assert "double-bos" in ids(findings)  # still found and recorded in the manifest's facts
    assert not any(line.startswith("doctor (warning) double-bos") for line in logged), logged
    aside = [line for line in logged if "do not affect training" in line]
    assert len(aside) == 1 and "(double-bos)" in aside[0] and "ftcli doctor" in aside[0]
