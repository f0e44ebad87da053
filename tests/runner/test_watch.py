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
