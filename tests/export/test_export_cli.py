"""`ftcli export` and `ftcli chat` as a user meets them: files, report, exit codes, safety."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ftcli.cli import app  # noqa: E402
from ftcli.export import gguf_tensors  # noqa: E402
from helpers.exports import make_full_run, make_lora_run  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return make_lora_run(tmp_path_factory.mktemp("runs") / "llama", "tiny-llama3")


@pytest.fixture(scope="module")
def exported(lora_run):
    result = invoke("export", lora_run, "--gguf", "q8_0,q4_k_m", "--ollama", "--safetensors", "--adapter")
    assert result.exit_code == 0, result.output
    return lora_run / "export", result.output


def test_export_writes_verified_files(exported):
    out, output = exported
    names = {p.name for p in out.iterdir()}
    assert {"model-q8_0.gguf", "model-q4_k_m.gguf", "Modelfile", "export-report.json", "merged", "adapter"} <= names
    assert "model-f16.gguf" not in names  # the intermediate base was not asked for
    assert not [n for n in names if n.startswith(".")] and not list(out.parent.glob(".export.tmp*"))
    report = json.loads((out / "export-report.json").read_text())
    files = {f["file"]: f for f in report["files"]}
    base = files["model-f16.gguf"]
    assert base["kept"] is False and base["parity"]["nmse"] < 1e-3 and base["parity"]["top1_agreement"] >= 0.9
    assert files["model-q8_0.gguf"]["parity"]["kl_mean"] < 0.05
    assert files["model-q4_k_m.gguf"]["fallbacks"]  # 96-wide rows cannot use 256-blocks
    assert report["tokenization"]["chat_match"] and report["source"]["merged_from_adapter"]
    assert report["template"]["name"] == "llama3" and files["Modelfile"]["from"] == "model-q8_0.gguf"
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text()
    assert (out / "merged" / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert "model-q8_0.gguf" in output and "tokenisation parity" in output


def test_exporting_twice_needs_overwrite_and_verify_only_rechecks(exported, lora_run):
    out, _ = exported
    again = invoke("export", lora_run, "--gguf", "q8_0")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert (out / "model-q4_k_m.gguf").is_file()  # the refused export touched nothing
    check = invoke("export", lora_run, "--verify-only")
    assert check.exit_code == 0, check.output
    assert "verified" in json.loads((out / "export-report.json").read_text())


def test_a_second_export_adds_its_files_and_keeps_the_others(tmp_path):
    run = make_lora_run(tmp_path / "run", "tiny-qwen3", seed=3)
    assert invoke("export", run, "--gguf", "q8_0", "--no-verify").exit_code == 0
    result = invoke("export", run, "--gguf", "f16", "--overwrite", "--no-verify")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "export").iterdir()) == ["export-report.json", "model-f16.gguf",
                                                                  "model-q8_0.gguf", "quant-quality.png"]


def test_chat_answers_from_the_gguf_and_from_the_run(exported, lora_run):
    out, _ = exported
    for target in (out / "model-q8_0.gguf", lora_run):
        result = invoke("chat", target, "--prompt", "What is 12 plus 7?", "--max-new-tokens", "8")
        assert result.exit_code == 0, result.output
        assert result.output.strip()


def test_full_finetune_sentencepiece_run_exports_with_modelfile(tmp_path):
    run = make_full_run(tmp_path / "run", "tiny-mistral")
    result = invoke("export", run, "--gguf", "q8_0", "--ollama")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "export-report.json").read_text())
    assert report["gguf"]["tokenizer_model"] == "llama" and report["tokenization"]["chat_match"]
    modelfile = (run / "export" / "Modelfile").read_text()
    assert 'PARAMETER stop "</s>"' in modelfile and "<s>" not in modelfile.replace("</s>", "")


def test_a_failed_f16_parity_check_exits_1(tmp_path, monkeypatch):
    run = make_lora_run(tmp_path / "run", "tiny-llama3", seed=4)
    monkeypatch.setattr(gguf_tensors, "permute_rows", lambda t, heads: t)  # a converter bug
    result = invoke("export", run, "--gguf", "q8_0")
    assert result.exit_code == 1 and "does not reproduce" in result.output
    assert not (run / "export").exists()  # nothing half-written is left


def test_bad_arguments_exit_2(lora_run, tmp_path):
    result = invoke("export", lora_run, "--gguf", "q3_k_xl")
    assert result.exit_code == 2 and "q4_k_m" in result.output
    assert invoke("export", tmp_path / "nowhere").exit_code == 2
    result = invoke("export", "--help")
    assert result.exit_code == 0 and "q4_k_m" in result.output and "q6_k" in result.output


def test_missing_llama_cpp_exits_2_naming_the_install_command(lora_run, tmp_path):
    code = ("import sys; sys.modules['llama_cpp'] = None; sys.argv = ['ftcli', 'export', sys.argv[1], '--gguf', "
            "'q8_0', '--out', sys.argv[2]]; from ftcli.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code, str(lora_run), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "llama-cpp-python" in out.stderr and "pip install" in out.stderr and "Traceback" not in out.stderr


def test_train_with_gguf_and_ollama_in_the_recipe_exports_at_the_end(tmp_path):
    from ftcli import recipe
    from ftcli.runner import train as training
    from helpers.runs import write_recipe

    path = write_recipe(tmp_path / "r.yaml", export={"formats": ["gguf", "ollama"], "gguf_quant": ["q8_0"]},
                        train={"max_steps": 2})
    result = training.run(recipe.load(path))
    out = result.run_dir / "export"
    assert (out / "model-q8_0.gguf").is_file() and (out / "Modelfile").is_file()
    report = json.loads((out / "export-report.json").read_text())
    assert next(f for f in report["files"] if f["file"] == "model-f16.gguf")["parity"]["nmse"] < 1e-3


@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-phi3"])
def test_adapter_as_a_lora_gguf_reproduces_the_merged_model_in_llama_cpp(tmp_path, name):
    run = make_lora_run(tmp_path / "run", name, seed=6)
    result = invoke("export", run, "--adapter-gguf", "--adapter")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "export-report.json").read_text())
    lora = next(f for f in report["files"] if f["file"] == "adapter-lora.gguf")
    # base GGUF + LoRA in llama.cpp == merged HF model (q/k rows of B permuted for llama, fused qkv for phi3)
    assert lora["parity"]["nmse"] < 1e-4 and lora["adapted_tensors"] > 0, lora
    assert (run / "export" / "adapter" / "adapter_model.safetensors").is_file()
