"""Pipelines end to end on a builtin model: the hand-off between stages, the DPO reference of a later stage,
pipeline.json and the combined plot, resume across a stage boundary after SIGKILL, and --from."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftcli import recipe
from ftcli.errors import BadInput
from ftcli.runner import checkpoints, pipeline_state
from ftcli.runner import pipeline as pipelines
from helpers.runs import REPO, write_jsonl
from runner.test_resume_and_guards import ftcli

PAIRS = str(REPO / "recipes" / "data" / "preference-sample.jsonl")


def pipeline_file(tmp_path, name="pipe", second=None, sft_train=None, **top):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i} + 1 = {i + 1}."}]} for i in range(16)]
    data = {"model": {"name": "builtin:tiny-llama3", "max_seq_length": 64}, "template": {"name": "llama3"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"per_device_train_batch_size": 4, "logging_steps": 1, "seed": 5},
            "output_dir": str(tmp_path / name), **top,
            "stages": [{"stage": "sft", "dataset": {"path": str(write_jsonl(tmp_path / "sft.jsonl", rows))},
                        "train": {"max_steps": 3, "learning_rate": 5e-3, **(sft_train or {})}},
                       {"stage": "dpo", "dataset": {"path": PAIRS, "format": "preference"},
                        "train": {"max_steps": 2, "learning_rate": 1e-3}, **(second or {})}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def first_dpo_rewards(run_dir):
    metrics = [json.loads(line) for line in (run_dir / "stages" / "02-dpo" / "metrics.jsonl").read_text().splitlines()]
    return next(m for m in metrics if "rewards/chosen" in m)


def chat_template(folder):
    """The chat template saved with a stage's adapter (a .jinja file, or inside tokenizer_config.json)."""
    jinja = folder / "adapter" / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    return json.loads((folder / "adapter" / "tokenizer_config.json").read_text())["chat_template"]


def adapter(folder):
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_dpo_after_sft_starts_from_the_sft_model_and_uses_it_as_reference(tmp_path, monkeypatch):
    result = pipelines.run(recipe.load_pipeline(pipeline_file(tmp_path)))
    run = result.run_dir
    first = first_dpo_rewards(run)
    # At DPO's first step the policy is the model the stage started from: with it as the reference, both
    # rewards are zero.
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    state = json.loads((run / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in state["stages"]] == [("sft", "done"), ("dpo", "done")]
    assert state["status"] == "done" and all(s["input_hash"].startswith("sha256:") for s in state["stages"])
    assert state["stages"][1]["final_metrics"]["steps"] == 2 and "rewards/margins" in state["stages"][1]["final_metrics"]
    assert (run / "loss.png").stat().st_size > 0 and (run / "stages" / "01-sft" / "loss.png").exists()
    resolved = yaml.safe_load((run / "stages" / "02-dpo" / "recipe.resolved.yaml").read_text())
    assert resolved["model"]["adapter"] == str(run / "stages" / "01-sft" / "adapter")
    assert adapter(run / "stages" / "02-dpo").keys() == adapter(run / "stages" / "01-sft").keys()
    assert chat_template(run / "stages" / "01-sft") == chat_template(run / "stages" / "02-dpo")  # carried through
    assert "<|eot_id|>" in chat_template(run / "stages" / "02-dpo")

    # Negative control: a reference that is silently the original base. The rewards at step 1 then measure how
    # far SFT moved the model (which also proves DPO started from the SFT weights, not from a fresh adapter).
    from ftcli.stages import dpo

    def base_as_reference(recipe_, trainer):
        if "ref" in trainer.model.peft_config:
            trainer.model.delete_adapter("ref")

    monkeypatch.setattr(dpo, "use_base_as_reference", base_as_reference)
    wrong = pipelines.run(recipe.load_pipeline(pipeline_file(tmp_path, "wrong")))
    assert abs(first_dpo_rewards(wrong.run_dir)["rewards/chosen"]) > 1e-3


def test_merge_before_trains_a_fresh_adapter_on_the_merged_sft_model(tmp_path):
    from ftcli.models import pretrained

    path = pipeline_file(tmp_path, second={"merge_before": True, "lora": {"r": 2, "alpha": 4}})
    run = pipelines.run(recipe.load_pipeline(path)).run_dir
    merged = run / "stages" / "01-sft" / "merged"
    assert (merged / "tokenizer_config.json").exists()
    base, _ = pretrained.load(recipe.ModelSection(name="builtin:tiny-llama3"))
    weights = load_file(next(merged.glob("*.safetensors")))
    name = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.allclose(weights[name], base.state_dict()[name])  # the SFT adapter is in these weights
    assert first_dpo_rewards(run)["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)  # reference: merged model
    config = json.loads((run / "stages" / "02-dpo" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["base_model_name_or_path"] == str(merged)


def test_resume_skips_done_stages_and_reruns_changed_ones(tmp_path):
    path = pipeline_file(tmp_path)
    loaded = recipe.load_pipeline(path)
    hashes = pipeline_state.input_hashes(loaded)
    done = {"stages": [{"number": 1, "status": "done", "input_hash": hashes[0]},
                       {"number": 2, "status": "done", "input_hash": hashes[1]}]}
    assert pipeline_state.plan_actions(loaded, hashes, done, resume=True, start=None) == ["skip", "skip"]
    assert pipeline_state.plan_actions(loaded, hashes, done, resume=False, start=None) == ["run", "run"]
    assert pipeline_state.plan_actions(loaded, hashes, done, resume=True, start=1) == ["skip", "run"]
    interrupted = {"stages": [done["stages"][0], {"number": 2, "status": "running", "input_hash": hashes[1]}]}
    assert pipeline_state.plan_actions(loaded, hashes, interrupted, resume=True, start=None) == ["skip", "run"]
    (tmp_path / "pipe" / "stages" / "02-dpo" / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "pipe" / "stages" / "02-dpo" / "checkpoints" / "checkpoint-1" / checkpoints.MARKER).write_text("{}")
    assert pipeline_state.plan_actions(loaded, hashes, interrupted, resume=True, start=None) == ["skip", "resume"]
    # A changed stage 1 (its data here) changes both hashes: stage 1 runs again, and so does everything after it.
    with (tmp_path / "sft.jsonl").open("a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
                     + "\n")
    changed = pipeline_state.input_hashes(recipe.load_pipeline(path))
    assert changed[0] != hashes[0] and changed[1] != hashes[1]
    assert pipeline_state.plan_actions(loaded, changed, done, resume=True, start=None) == ["run", "run"]
    with pytest.raises(BadInput, match="stage 1 \\(sft\\) before it is not finished"):
        pipeline_state.plan_actions(loaded, changed, done, resume=False, start=1)
    edited = recipe.load_pipeline(path, ["stages.1.train.dpo.beta=0.5"])
    assert pipeline_state.input_hashes(edited)[0] == changed[0] and pipeline_state.input_hashes(edited)[1] != changed[1]


def test_an_existing_pipeline_run_is_kept_unless_told(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.json").write_text("{}")
    loaded = recipe.load_pipeline(pipeline_file(tmp_path))
    with pytest.raises(BadInput, match="--resume .* --from STAGE .* --overwrite"):
        pipelines.run(loaded)
    empty = recipe.load_pipeline(pipeline_file(tmp_path, "fresh"))
    with pytest.raises(BadInput, match="no pipeline.json"):
        pipelines.run(empty, resume=True)


def test_validate_dry_run_and_nproc_on_a_pipeline(tmp_path):
    path = pipeline_file(tmp_path)
    checked = ftcli(["validate", path])
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "1. sft (sft)" in checked.stdout and "2. dpo (dpo)" in checked.stdout
    dry = ftcli(["train", path, "--dry-run"])
    assert dry.returncode == 0 and "dry run ok" in dry.stdout and not (tmp_path / "pipe").exists()
    unknown = ftcli(["train", path, "--nproc", "2", "--from", "ppo"])  # refused before any process starts
    assert unknown.returncode == 2 and "not a stage" in unknown.stderr and "launching" not in unknown.stdout
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.json").write_text("{}")
    taken = ftcli(["train", path, "--nproc", "2"])
    assert taken.returncode == 2 and "already holds a run" in taken.stderr and "launching" not in taken.stdout
    single = ftcli(["train", REPO / "recipes" / "quickstart.yaml", "--from", "sft"])
    assert single.returncode == 2 and "single-stage recipe" in single.stderr


@pytest.mark.slow
def test_sigkill_inside_stage_two_then_resume_equals_an_uninterrupted_pipeline(tmp_path):
    second = {"train": {"max_steps": 6, "save_steps": 2, "learning_rate": 1e-3}}
    straight = ftcli(["train", pipeline_file(tmp_path, "straight", second=second)])
    assert straight.returncode == 0, straight.stderr[-2000:]

    path = pipeline_file(tmp_path, "killed", second=second)
    killed = ftcli(["train", path], {"FTCLI_TEST_FAULT": "sigkill-at-step:4"})  # stage 1 has 3 steps: stage 2 dies
    assert killed.returncode == -9
    run = tmp_path / "killed"
    state = json.loads((run / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "running"]
    assert checkpoints.latest(run / "stages" / "02-dpo" / "checkpoints").name == "checkpoint-4"
    sft_before = (run / "stages" / "01-sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    resumed = ftcli(["train", path, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage 1 sft: finished earlier with the same inputs, skipped" in resumed.stdout
    assert "resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert (run / "stages" / "01-sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == sft_before
    state = json.loads((run / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "done"] and state["stages"][1]["resumed"] is True
    a, b = adapter(run / "stages" / "02-dpo"), adapter(tmp_path / "straight" / "stages" / "02-dpo")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    # --from dpo: stage 1 is kept as it is, stage 2 runs again from scratch (and, deterministic, ends the same).
    again = ftcli(["train", path, "--from", "dpo"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "stages" / "01-sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == sft_before
    rerun = json.loads((run / "pipeline.json").read_text())["stages"][1]
    assert rerun["resumed"] is False and rerun["started"] >= state["stages"][1]["started"]
    c = adapter(run / "stages" / "02-dpo")
    assert max((c[k] - b[k]).abs().max().item() for k in c) < 1e-5
    unknown = ftcli(["train", path, "--from", "ppo"])
    assert unknown.returncode == 2 and "not a stage of this pipeline (stages: sft, dpo)" in unknown.stderr


@pytest.mark.slow
def test_two_processes_run_a_pipeline_as_one_process_does(tmp_path):
    """SFT, then DPO on its adapter, then DPO on the merged weights with a fresh adapter: in two processes with half
    the batch each, every stage ends with the weights of one process (float64, plain SGD: equal up to rounding)."""
    def write(name):
        path = pipeline_file(tmp_path, name, sft_train={"learning_rate": 0.2},
                             second={"train": {"max_steps": 2, "learning_rate": 0.2}})
        data = yaml.safe_load(path.read_text())
        data["model"]["dtype"] = "float64"
        data["train"] |= {"optim": "sgd", "lr_scheduler_type": "constant", "max_grad_norm": 0.0}
        third = {**data["stages"][1], "name": "dpo-merged", "merge_before": True, "lora": {"r": 2, "alpha": 4},
                 "train": {"max_steps": 1, "learning_rate": 0.2}}
        data["stages"].append(third)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    env = {"OMP_NUM_THREADS": "1"}
    one = ftcli(["train", write("one")], env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = ftcli(["train", write("two"), "--nproc", "2", "--set", "train.per_device_train_batch_size=2"], env)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "launching 2 processes" in two.stdout and two.stdout.count("run directory") == 1  # rank 0 reports
    state = json.loads((tmp_path / "two" / "pipeline.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done"] * 3 and state["status"] == "done"
    for stage in ["01-sft", "02-dpo", "03-dpo-merged"]:
        a, b = adapter(tmp_path / "one" / "stages" / stage), adapter(tmp_path / "two" / "stages" / stage)
        update = max(v.abs().max().item() for k, v in a.items() if "lora_B" in k)
        assert update > 1e-4, stage  # the stage trained
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-9 * update, stage
    manifest = yaml.safe_load((tmp_path / "two" / "stages" / "03-dpo-merged" / "recipe.resolved.yaml").read_text())
    assert manifest["_run"]["world_size"] == 2
    assert manifest["model"]["name"] == str(tmp_path / "two" / "stages" / "02-dpo" / "merged")
