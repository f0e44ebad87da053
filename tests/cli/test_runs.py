"""`ftcli runs`, and the card's commands with no target (`ftcli export --gguf q4_k_m`, `ftcli doctor`), run
exactly as written in a folder with runs/ (and in one without)."""

import subprocess
import sys

import pytest

from helpers.fake_runs import fake_run
from helpers.runs import write_recipe


def ftcli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ftcli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_runs_lists_shows_and_compares(tmp_path):
    fake_run(tmp_path / "runs", "sft-old", age_seconds=3 * 86400, exports=("f16", "q4_k_m"))
    fake_run(tmp_path / "runs", "grpo-new", stage="grpo", max_steps=6,
             metrics=[{"step": s, "loss": 0.0, "reward": 0.0, "frac_reward_zero_std": 1.0} for s in range(1, 7)])
    listed = ftcli("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["grpo-new", "grpo", "done"] and "6/6" in lines[1] and "reward 0" in lines[1]
    assert "sft-old" in lines[2] and "f16 q4_k_m" in lines[2] and "3d" in lines[2] and "loss 0.2" in lines[2]
    assert max(map(len, lines)) <= 80
    shown = ftcli("runs", "show", cwd=tmp_path)  # no argument: the newest finished run, named
    assert shown.returncode == 0 and "runs/grpo-new (the newest finished run" in shown.stdout
    assert "no learning signal" in shown.stdout and "groups with no reward spread" in shown.stdout
    compared = ftcli("runs", "compare", "runs/sft-old", "latest", "--out", "cmp.png", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert (tmp_path / "cmp.png").stat().st_size > 1000 and "grpo-new" in compared.stdout


def test_runs_without_runs_and_bad_targets(tmp_path):
    out = ftcli("runs", cwd=tmp_path)
    assert out.returncode == 0 and "no runs under runs/" in out.stdout
    out = ftcli("runs", "show", cwd=tmp_path)
    assert out.returncode == 2 and "ftcli train recipes/quickstart.yaml" in out.stderr
    out = ftcli("runs", "show", tmp_path, cwd=tmp_path)
    assert out.returncode == 2 and "not a run directory" in out.stderr and "Traceback" not in out.stderr
    out = ftcli("runs", "compare", "latest", cwd=tmp_path)
    assert out.returncode == 2 and "at least two runs" in out.stderr


@pytest.mark.slow
def test_the_cards_export_command_exports_the_newest_run_and_says_which(tmp_path):
    pytest.importorskip("llama_cpp")
    from helpers.exports import make_lora_run

    make_lora_run(tmp_path / "runs" / "older", "tiny-llama3")
    newest = make_lora_run(tmp_path / "runs" / "newer", "tiny-llama3", seed=1)
    out = ftcli("export", "--gguf", "q4_k_m", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "runs/newer (the newest finished run under runs/" in out.stdout
    assert (newest / "export" / "model-q4_k_m.gguf").is_file() and not (tmp_path / "runs" / "older" / "export").exists()


def test_the_cards_export_command_with_no_run_says_how_to_name_one(tmp_path):
    out = ftcli("export", "--gguf", "q4_k_m", cwd=tmp_path)
    assert out.returncode == 2 and "no finished run under runs/" in out.stderr
    assert "ftcli export RUN_DIR" in out.stderr and "Traceback" not in out.stderr


def test_the_cards_doctor_command_checks_the_newest_run_else_the_recipe_here(tmp_path):
    from ftcli import recipe
    from helpers.exports import make_full_run

    recipe_dir = tmp_path / "project"
    recipe_dir.mkdir()
    write_recipe(recipe_dir / "recipe.yaml")
    out = ftcli("doctor", cwd=recipe_dir)
    assert out.returncode == 0, out.stderr
    assert "doctor: checking recipe.yaml (the recipe in this folder" in out.stdout
    run = make_full_run(recipe_dir / "runs" / "full", "tiny-mistral")
    resolved = recipe.load(write_recipe(tmp_path / "full.yaml", model={"name": "builtin:tiny-mistral"},
                                        template={"name": "mistral"}, lora=None))
    (run / "recipe.resolved.yaml").write_text(recipe.to_yaml(resolved, {"status": "done"}))
    out = ftcli("doctor", cwd=recipe_dir)
    assert out.returncode == 0, out.stderr
    assert "doctor: checking runs/full (the newest finished run" in out.stdout
    table = [line for line in out.stdout.splitlines() if line.startswith(" ")]
    assert table and max(map(len, table)) <= 80  # the findings' table fits 80 columns
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ftcli("doctor", cwd=empty)
    assert out.returncode == 2 and "name a target" in out.stderr
