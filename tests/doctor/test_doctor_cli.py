"""`ftcli doctor TARGET [--json] [--fix OUT_DIR] [--numerics]`: every kind of target, the JSON shape,
exit codes 0/1/2, and --fix writing corrected copies, never in place."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from helpers.doctor import broken_folder, write_gguf
from helpers.doctor import builtin_dir, copy_builtin, fixtures_dir

from ftcli.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def doctor(*args):
    return runner.invoke(app, ["doctor", *map(str, args)])


def as_json(result) -> dict:
    return json.loads(result.stdout)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_json_shape_and_exit_0_on_a_healthy_builtin():
    result = doctor("builtin:tiny-qwen3", "--json")
    assert result.exit_code == 0, result.stdout
    data = as_json(result)
    assert data["target"] == "builtin:tiny-qwen3"
    for f in data["findings"]:
        assert {"check", "severity", "message", "fixable"} <= set(f)
        assert f["severity"] in ("error", "warning", "info") and isinstance(f["fixable"], bool)


def test_errors_exit_1_with_a_table_grouped_by_severity(tmp_path):
    folder = broken_folder("pad-is-eos", tmp_path)
    result = doctor(folder)
    assert result.exit_code == 1
    out = result.stdout
    assert "errors (" in out and "pad-is-eos" in out and "(--fix)" in out
    assert out.index("errors (") < out.index("warnings (")


def test_fix_writes_corrected_copies_and_exits_0(tmp_path):
    folder = broken_folder("pad-is-eos", tmp_path)
    before = digest(folder)
    out = tmp_path / "fixed"
    result = doctor(folder, "--fix", out, "--json")
    assert result.exit_code == 0, result.stdout
    data = as_json(result)
    assert "pad-is-eos" in data["fix"]["fixed"] and "tokenizer_config.json" in data["fix"]["written"]
    assert digest(folder) == before  # never in place
    assert json.loads((out / "tokenizer_config.json").read_text())["pad_token"] != "<|im_end|>"
    again = as_json(doctor(out, "--json"))
    assert "pad-is-eos" not in {f["check"] for f in again["findings"]}


def test_fix_refuses_to_write_in_place(tmp_path):
    folder = broken_folder("pad-is-eos", tmp_path)
    assert doctor(folder, "--fix", folder).exit_code == 2


def test_embeddings_are_re_saved_when_the_fix_needs_them(tmp_path):
    folder = broken_folder("untrained-special-tokens", tmp_path)
    out = tmp_path / "fixed"
    assert doctor(folder, "--fix", out).exit_code == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert doctor(out).exit_code == 0


@pytest.mark.parametrize("target", ["no/such/folder/at/all", "missing.yaml", "missing.gguf"])
def test_unreadable_targets_exit_2(target, tmp_path):
    result = doctor(tmp_path / target, "--json")
    assert result.exit_code == 2
    assert "error" in as_json(result)


def test_a_tokenizer_only_folder_works_and_says_weights_were_skipped(tmp_path):
    folder = copy_builtin("tiny-llama3", tmp_path / "tok", weights=False)
    (folder / "config.json").unlink()
    result = doctor(folder, "--json")
    assert result.exit_code == 0, result.stdout
    notes = " ".join(as_json(result)["notes"])
    assert "embedding checks skipped" in notes and "config checks skipped" in notes


def test_a_real_release_folder_without_weights():
    result = doctor(fixtures_dir() / "tokenizers" / "phi-3-mini-4k-instruct", "--json")
    assert result.exit_code == 1
    assert {"pad-is-eos", "eos-not-end-of-turn"} <= {f["check"] for f in as_json(result)["findings"]}


def test_gguf_target(tmp_path):
    import gguf

    ok = doctor(write_gguf(tmp_path / "ok.gguf"), "--json")
    assert ok.exit_code == 0, ok.stdout
    bad = doctor(write_gguf(tmp_path / "bad.gguf", {"<|eot_id|>": gguf.TokenType.NORMAL}), "--json")
    assert bad.exit_code == 1 and "gguf-token-type" in {f["check"] for f in as_json(bad)["findings"]}
    assert doctor(tmp_path / "ok.gguf", "--fix", tmp_path / "x").exit_code == 2  # GGUF files are not rewritten


def _recipe(tmp_path: Path, **model) -> Path:
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                          {"role": "assistant", "content": f"ANSWER: {i + 1}"}]} for i in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = {"model": {"name": "builtin:tiny-qwen3", "max_seq_length": 64, **model},
              "template": {"name": "auto"}, "dataset": {"path": str(data)}, "lora": {"r": 4},
              "train": {"max_steps": 1, "per_device_train_batch_size": 2}, "output_dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_target_reads_the_model_template_and_data(tmp_path):
    result = doctor(_recipe(tmp_path), "--json")
    assert result.exit_code == 0, result.stdout
    too_long = doctor(_recipe(tmp_path, max_seq_length=100000), "--json")
    assert too_long.exit_code == 1
    assert any(f["check"] == "max-length" and f["severity"] == "error" for f in as_json(too_long)["findings"])


def test_run_directory_target(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    for f in builtin_dir("tiny-qwen3").iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copyfile(f, run / "adapter" / f.name)
    recipe = yaml.safe_load(_recipe(tmp_path).read_text())
    recipe["_run"] = {"status": "done"}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    result = doctor(run, "--json")
    assert result.exit_code == 0, result.stdout
    assert not any("embedding checks skipped" in n for n in as_json(result)["notes"])  # the base model's weights


def test_numerics_on_a_recipe(tmp_path):
    result = doctor(_recipe(tmp_path), "--numerics", "--json")
    assert result.exit_code == 0, result.stdout
    found = {f["check"]: f for f in as_json(result)["findings"]}
    assert found["numerics-ga"]["severity"] == "info" and "exact" in found["numerics-ga"]["message"]
    assert "numerics-packing" in found and "numerics-kernels" in found
    # With the block-diagonal mask of the SFT stage, packed rows give the unpacked loss.
    assert found["numerics-packing"]["severity"] == "info", found["numerics-packing"]["message"]


def test_numerics_catches_inexact_gradient_accumulation(monkeypatch):
    """The naive per-micro-batch mean (the famous GA bug) is what numerics-ga reports as an error."""
    import torch

    from ftcli.doctor import numerics
    from helpers.doctor import live

    model, tok, template = live("tiny-qwen3")
    from ftcli.data import templates

    convs = [[{"role": "user", "content": "Hi " * n}, {"role": "assistant", "content": "ok " * (9 - n)}] for n in range(1, 5)]
    samples = [templates.encode(template, c, tok) for c in convs]
    assert numerics.ga_check(model, samples, tok.pad_token_id, 2, 1e-5).severity == "info"
    forward = model.forward

    def ignores_num_items(*args, num_items_in_batch=None, **kwargs):  # a loss that divides per micro-batch
        out = forward(*args, **kwargs)
        if num_items_in_batch is not None:
            out.loss = out.loss * 0 + out.loss / 2
        return out

    monkeypatch.setattr(model, "forward", ignores_num_items)
    assert numerics.ga_check(model, samples, tok.pad_token_id, 2, 1e-5).severity == "error"
    assert torch.is_tensor(samples[0]["input_ids"]) is False


def test_the_installed_command_exits_1_on_errors(tmp_path):
    folder = broken_folder("template-header-every-turn", tmp_path)
    exe = shutil.which("ftcli")
    cmd = [exe] if exe else [sys.executable, "-c", "from ftcli.cli import main; main()"]
    out = subprocess.run([*cmd, "doctor", str(folder), "--json"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 1, out.stderr
    assert "template-header-every-turn" in {f["check"] for f in json.loads(out.stdout)["findings"]}


def test_a_hub_id_that_cannot_be_fetched_exits_2(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = doctor("no-such-org-ftcli/no-such-model", "--json")
    # offline is detected at once: the error says so instead of retrying the network
    assert result.exit_code == 2 and "hub is offline" in as_json(result)["error"]


def test_fix_on_a_recipe_target_saves_the_fixed_embeddings(tmp_path):
    folder = broken_folder("untrained-special-tokens", tmp_path)
    recipe = _recipe(tmp_path, name=str(folder))
    text = recipe.read_text().replace("name: auto", "name: llama3")
    recipe.write_text(text)
    assert doctor(recipe).exit_code == 1
    out = tmp_path / "fixed"
    result = doctor(recipe, "--fix", out, "--json")
    assert result.exit_code == 0, result.stdout
    assert "untrained-special-tokens" in as_json(result)["fix"]["fixed"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "untrained-special-tokens" not in {f["check"] for f in as_json(doctor(out, "--json"))["findings"]}


def test_numerics_packing_on_a_sliding_window_model(monkeypatch):
    """Gemma 3 samples longer than its local window: packed the SFT stage's way, the loss is the unpacked
    loss; packed under a full-attention block mask (the window lost), numerics-packing reports it."""
    import torch

    from ftcli.doctor import numerics
    from ftcli.data import packing, templates
    from helpers.doctor import live

    model, tok, template = live("tiny-gemma3")
    convs = [[{"role": "user", "content": "Hi there " * n}, {"role": "assistant", "content": "ok " * n}]
             for n in (12, 20)]
    samples = [templates.encode(template, c, tok) for c in convs]
    assert min(len(s["input_ids"]) for s in samples) > 2 * model.config.sliding_window
    found = numerics.packing_check(model, samples, tok.pad_token_id, 1e-5, packing_on=True)
    assert found.severity == "info", found.message

    class WindowLost(packing.PaddingFreePacking):
        """The old collator: one [1, 1, T, T] block-diagonal causal mask, which replaced the per-layer masks."""

        def __call__(self, examples):
            batch = super().__call__(examples)
            pos = batch["position_ids"][0]
            segment = torch.cumsum((pos == 0).long(), 0)
            causal = torch.ones(len(pos), len(pos), dtype=torch.bool).tril()
            batch["attention_mask"] = (causal & (segment[:, None] == segment[None, :]))[None, None]
            return batch

    monkeypatch.setattr(packing, "PaddingFreePacking", WindowLost)
    assert numerics.packing_check(model, samples, tok.pad_token_id, 1e-5, packing_on=True).severity == "error"
