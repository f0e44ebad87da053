"""The early warning during training: once, after the first steps, only when there is no signal."""

from types import SimpleNamespace

from ftcli.runner.watch import LearningWatch


def feed(watch, logs):
    for log in logs:
        watch.on_log(None, SimpleNamespace(global_step=log["step"], is_world_process_zero=True), None, logs=log)


def test_no_reward_spread_is_said_once_after_the_first_steps():
    said = []
    watch = LearningWatch("grpo", said.append, after_steps=3)
    feed(watch, [{"step": s, "reward": 0.0, "frac_reward_zero_std": 1.0} for s in range(1, 3)])
    assert said == []  # not before the first 3 steps
    feed(watch, [{"step": s, "reward": 0.0, "frac_reward_zero_std": 1.0} for s in range(3, 9)])
    assert len(said) == 1 and said[0].startswith("warning: no learning signal")


def test_groups_with_reward_spread_give_no_warning():
    said = []
    feed(LearningWatch("grpo", said.append, after_steps=3),
         [{"step": s, "reward": 0.2, "frac_reward_zero_std": 0.5} for s in range(1, 9)])
    assert said == []


def test_a_grpo_run_whose_reward_never_varies_is_warned_during_training(tmp_path):
    from ftcli import recipe
    from ftcli.runner import signals
    from ftcli.runner import train as training
    from helpers.runs import write_jsonl, write_recipe

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say word {i}."} for i in range(8)])
    path = write_recipe(tmp_path / "grpo.yaml", dataset={"path": str(data), "format": "prompt"},
                        train={"stage": "grpo", "max_steps": signals.EARLY_STEPS, "per_device_train_batch_size": 8,
                               "logging_steps": 1, "grpo": {"num_generations": 4, "max_completion_length": 8,
                                                            "rewards": [{"type": "regex", "pattern": "^never$"}]}})
    said = []
    result = training.run(recipe.load(path), log=said.append)
    warnings = [line for line in said if line.startswith("warning: no learning signal")]
    assert len(warnings) == 1, said
    assert signals.warnings("grpo", result.metrics)[0] == warnings[0].removeprefix("warning: ")
    assert dict(signals.summary("grpo", result.metrics))["reward"] == "0.000 → 0.000 (flat)"
    assert (result.run_dir / "loss.png").is_file() and not (result.run_dir / "checkpoints").exists()
