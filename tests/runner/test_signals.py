"""Learning signals in plain words: GRPO reward spread, DPO preference, SFT loss; each with a negative control."""

from ftcli.runner import signals


def grpo_logs(zero_std: float, reward: float = 0.0, clipped: float = 0.0, steps: int = 6):
    return [{"step": s, "loss": 0.0, "reward": reward, "reward_std": 0.0, "frac_reward_zero_std": zero_std,
             "completions/clipped_ratio": clipped} for s in range(1, steps + 1)]


def test_grpo_without_reward_spread_warns_with_the_likely_causes():
    warning = signals.no_grpo_signal(grpo_logs(1.0))
    assert warning and "no learning signal" in warning and "100%" in warning
    for cause in ("too strict", "max_completion_length", "temperature"):
        assert cause in warning
    assert signals.early_warning("grpo", grpo_logs(1.0)) == warning
    assert signals.warnings("grpo", grpo_logs(1.0))[0] == warning


def test_truncated_completions_are_named_first_when_the_logs_show_them():
    warning = signals.no_grpo_signal(grpo_logs(1.0, clipped=0.8))
    causes = warning.split("Likely causes: ")[1]
    assert causes.startswith("completions are cut off") and "(80% of them were)" in causes


def test_grpo_with_reward_spread_is_quiet():
    logs = [{"step": s, "reward": 0.1 * s, "frac_reward_zero_std": 0.25, "kl": 0.01 * s} for s in range(1, 7)]
    assert signals.no_grpo_signal(logs) is None and signals.warnings("grpo", logs) == []
    rows = dict(signals.summary("grpo", logs))
    assert rows["reward"] == "0.100 → 0.600 (rising)" and rows["groups with no reward spread"].startswith("25%")


def test_dpo_summary_shows_reward_accuracy_and_margin():
    logs = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s, "rewards/margins": 0.2 * s}
            for s in range(1, 5)] + [{"step": 4, "eval_rewards/accuracies": 0.75, "eval_rewards/margins": 0.5}]
    rows = dict(signals.summary("dpo", logs))
    assert rows["reward accuracy"] == "60% → 90% (rising)" and rows["reward margin"] == "0.200 → 0.800 (rising)"
    assert rows["eval reward accuracy"] == "75%" and signals.warnings("dpo", logs) == []
    flat = [{"step": s, "loss": 0.6931, "rewards/accuracies": 0.0, "rewards/margins": 0.0} for s in range(1, 6)]
    assert any("does not prefer the chosen" in w for w in signals.warnings("dpo", flat))
    assert signals.live("dpo", flat[0]) == ["loss 0.6931", "acc 0%", "margin 0.000"]


def test_sft_loss_that_does_not_fall_is_named_and_a_falling_one_is_not():
    falling = [{"step": s, "loss": 3.0 / s, "mean_token_accuracy": 0.1 * s} for s in range(1, 7)]
    assert signals.warnings("sft", falling) == []
    assert dict(signals.summary("sft", falling))["token accuracy"] == "10% → 60% (rising)"
    flat = [{"step": s, "loss": 7.79 + 0.001 * (s % 2)} for s in range(1, 7)]
    assert signals.warnings("sft", flat) == ["train loss did not fall (7.7910 → 7.7900): check learning_rate and "
                                             "the data"]
    assert signals.warnings("sft", flat[:3]) == []  # three logs are too few to judge


def test_trend_words():
    assert signals.trend([1.0, 1.0, 1.0]) == "flat" and signals.trend([1.0, 2.0, 3.0]) == "rising"
    assert signals.trend([3.0, 2.0, 1.0]) == "falling" and signals.trend([1.0]) == ""
