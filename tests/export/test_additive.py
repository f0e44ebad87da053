"""Exports are additive: they never delete what the same call did not make (the quickstart's "chat with it" file
included), the report and the Modelfile describe the whole folder, and only a same-name file needs --overwrite."""

import json
import re
import shlex

import pytest
from typer.testing import CliRunner

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from ftcli.cli import app  # noqa: E402
from helpers.exports import make_lora_run  # noqa: E402
from helpers.runs import REPO, write_recipe  # noqa: E402

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def docs_commands() -> list[str]:
    """The commands of docs/export.md's first code block, comments cut."""
    text = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("ftcli ")]


def modelfile_target(export):
    return export / re.search(r"^FROM \./(\S+)", (export / "Modelfile").read_text(), re.M).group(1)


def assert_whole(export):
    """Every GGUF in the folder has its report entry, and the Modelfile points at a file that exists."""
    report = json.loads((export / "export-report.json").read_text())
    imatrix = ((report.get("calibration") or {}).get("imatrix") or {}).get("file")
    listed = {e["file"] for e in report["files"]} | {imatrix}
    assert {p.name for p in export.glob("*.gguf")} <= listed, listed
    assert modelfile_target(export).is_file()


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """A run trained like the quickstart: merged/, export/model-f16.gguf and a Modelfile."""
    from ftcli import recipe
    from ftcli.runner import train as training

    work = tmp_path_factory.mktemp("qs")
    path = write_recipe(work / "r.yaml", train={"max_steps": 2}, output_dir=str(work / "runs" / "quickstart"),
                        export={"formats": ["safetensors", "gguf", "ollama"], "gguf_quant": ["f16"]})
    return training.run(recipe.load(path))


@pytest.mark.slow
def test_the_chat_with_it_file_survives_every_command_of_docs_export(quickstart_run, monkeypatch):
    run, export = quickstart_run.run_dir, quickstart_run.run_dir / "export"
    monkeypatch.chdir(run.parent.parent)  # for the commands with no RUN_DIR: runs/ holds this run
    chat_file = quickstart_run.gguf_path
    assert chat_file == export / "model-f16.gguf"
    before = chat_file.read_bytes()
    commands = docs_commands()
    assert len(commands) >= 8 and "ftcli export --gguf q4_k_m" in commands
    for command in commands:
        args = shlex.split(command.replace("RUN_DIR", str(run)))[1:]
        result = invoke(*args, "--max-new-tokens", "4") if args[0] == "chat" else invoke(*args)
        # a same-name file (the f16 of a plain `ftcli export RUN_DIR` here) is refused, never replaced silently
        assert result.exit_code == 0 or (result.exit_code == 2 and "--overwrite" in result.output), \
            (command, result.output)
        assert chat_file.read_bytes() == before, command
        if result.exit_code == 0 and "--gguf" in args:
            followed = f"model-{args[args.index('--gguf') + 1].split(',')[0]}.gguf"
        if "RUN_DIR" not in command:
            assert f"{command.split()[1]}: runs/quickstart (the newest finished run" in result.output
        assert_whole(export)
    names = {p.name for p in export.iterdir()}
    assert {"model-f16.gguf", "model-q4_k_m.gguf", "model-q8_0.gguf", "adapter-lora.gguf", "merged", "adapter",
            "Modelfile"} <= names
    assert modelfile_target(export).name == followed  # the Modelfile follows the last call that wrote GGUFs


@pytest.mark.slow
def test_another_quant_adds_to_the_export_and_overwrite_replaces_only_its_own_name(tmp_path):
    run = make_lora_run(tmp_path / "run", "tiny-llama3", seed=2)
    export = run / "export"
    first = invoke("export", run, "--gguf", "q4_k_m", "--ollama", "--no-verify")
    assert first.exit_code == 0, first.output
    # the case: q8_0 with --overwrite after a q4_k_m export used to delete model-q4_k_m.gguf
    second = invoke("export", run, "--gguf", "q8_0", "--overwrite", "--no-verify")
    assert second.exit_code == 0, second.output
    assert (export / "model-q4_k_m.gguf").is_file() and (export / "model-q8_0.gguf").is_file()
    assert modelfile_target(export).name == "model-q8_0.gguf" and "kept from earlier exports" in second.output
    report = json.loads((export / "export-report.json").read_text())
    assert [h["wrote"] for h in report["history"]][-1] == ["Modelfile", "model-q8_0.gguf", "quant-quality.png"]
    assert_whole(export)
    again = invoke("export", run, "--gguf", "q8_0", "--no-verify")
    assert again.exit_code == 2 and "model-q8_0.gguf" in again.output and "--overwrite" in again.output
    inode = (export / "model-q4_k_m.gguf").stat().st_ino
    replaced = invoke("export", run, "--gguf", "q8_0", "--overwrite", "--no-verify")
    assert replaced.exit_code == 0 and (export / "model-q4_k_m.gguf").stat().st_ino == inode


def test_a_users_own_modelfile_is_never_replaced_without_overwrite(tmp_path):
    run = make_lora_run(tmp_path / "run", "tiny-qwen3", seed=1)
    (run / "export").mkdir()
    (run / "export" / "Modelfile").write_text("FROM ./mine.gguf\n")
    refused = invoke("export", run, "--gguf", "q8_0", "--ollama", "--no-verify")
    assert refused.exit_code == 2 and "Modelfile" in refused.output
    kept = invoke("export", run, "--gguf", "q8_0", "--no-verify")  # no --ollama: the user's file is left alone
    assert kept.exit_code == 0, kept.output
    assert (run / "export" / "Modelfile").read_text() == "FROM ./mine.gguf\n"


def test_out_on_an_existing_file_exits_2(tmp_path):
    run = make_lora_run(tmp_path / "run", "tiny-llama3", seed=5)
    (tmp_path / "file").write_text("x")
    result = invoke("export", run, "--gguf", "q8_0", "--out", tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.output
