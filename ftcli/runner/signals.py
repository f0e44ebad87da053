"""Whether a run is learning, in plain words, from the dicts it logged (metrics.jsonl).

Each stage has its own evidence: SFT a falling loss and a rising token accuracy, DPO the share of pairs whose
chosen reply the policy prefers (reward accuracy) and by how much (margin), GRPO the mean reward and the share
of prompt groups whose completions all scored the same, which have zero advantage and teach nothing.
Pure functions: the progress bar, the end summary, `ftcli runs` and loss.png all read them.
"""

from __future__ import annotations

ZERO_SPREAD_MAX = 0.9   # GRPO: above this share of groups with no reward spread there is (almost) no signal
EARLY_STEPS = 5         # ... judged over the logs of the first EARLY_STEPS optimizer steps
FLAT = 0.02             # a change of under 2% of the larger magnitude is "flat"
GRPO_CAUSES = ("the rewards are too strict (every completion scores the same, often 0)",
               "completions are cut off at train.grpo.max_completion_length before they reach an answer",
               "the sampling temperature (train.grpo.temperature) is too low for the completions to differ")


def series(metrics: list[dict], key: str) -> list[float]:
    """The values of `key` in the training logs, in order (the end-of-run log is left out)."""
    return [float(m[key]) for m in metrics if key in m and "train_runtime" not in m and m[key] is not None]


def trend(values: list[float]) -> str:
    """rising, falling or flat: the mean of the last third against the mean of the first third."""
    if len(values) < 2:
        return ""
    third = max(1, len(values) // 3)
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    if abs(last - first) <= FLAT * max(abs(first), abs(last)) + 1e-9:
        return "flat"
    return "rising" if last > first else "falling"


def _change(values: list[float], spec: str, percent: bool = False) -> str:
    fmt = (lambda v: f"{v:.0%}") if percent else (lambda v: format(v, spec))
    text = fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])} → {fmt(values[-1])}"
    direction = trend(values)
    return f"{text} ({direction})" if direction else text


def summary(stage: str, metrics: list[dict]) -> list[tuple[str, str]]:
    """(label, text) rows of the stage's key metrics, first and last value with the trend."""
    rows = []
    wanted = {
        "sft": [("train loss", "loss", ".4f", False), ("token accuracy", "mean_token_accuracy", "", True)],
        "dpo": [("train loss", "loss", ".4f", False), ("reward accuracy", "rewards/accuracies", "", True),
                ("reward margin", "rewards/margins", ".3f", False)],
        "grpo": [("reward", "reward", ".3f", False), ("reward spread", "reward_std", ".3f", False),
                 ("KL to the base", "kl", ".4f", False)],
    }.get(stage, [("train loss", "loss", ".4f", False)])
    for label, key, spec, percent in wanted:
        values = series(metrics, key)
        if values:
            rows.append((label, _change(values, spec, percent)))
    if stage == "grpo":
        zero = series(metrics, "frac_reward_zero_std")
        if zero:
            rows.append(("groups with no reward spread", f"{sum(zero) / len(zero):.0%} of all, {zero[-1]:.0%} at the end"))
    for label, key, spec, percent in (("eval loss", "eval_loss", ".4f", False),
                                      ("eval token accuracy", "eval_mean_token_accuracy", "", True),
                                      ("eval reward accuracy", "eval_rewards/accuracies", "", True),
                                      ("eval reward margin", "eval_rewards/margins", ".3f", False)):
        values = [float(m[key]) for m in metrics if key in m]
        if values:
            rows.append((label, format(values[-1], ".0%" if percent else spec)))
    return rows


def live(stage: str, logs: dict) -> list[str]:
    """The progress bar's words for one log: the stage's key figures."""
    if stage == "grpo" and "reward" in logs:
        parts = [f"reward {logs['reward']:.3f}"]
        if "frac_reward_zero_std" in logs:
            parts.append(f"no spread {logs['frac_reward_zero_std']:.0%}")
        return parts
    parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
    if stage == "dpo" and "rewards/accuracies" in logs:
        parts.append(f"acc {logs['rewards/accuracies']:.0%}")
        if "rewards/margins" in logs:
            parts.append(f"margin {logs['rewards/margins']:.3f}")
    return parts


def no_grpo_signal(metrics: list[dict]) -> str | None:
    """A warning when (nearly) every prompt group had identical rewards in every log so far."""
    zero = series(metrics, "frac_reward_zero_std")
    if not zero or min(zero) < ZERO_SPREAD_MAX:
        return None
    causes = list(GRPO_CAUSES)
    clipped = series(metrics, "completions/clipped_ratio")
    if clipped and max(clipped) >= 0.5:  # put the cause the logs point at first
        causes.insert(0, causes.pop(1) + f" ({max(clipped):.0%} of them were)")
    return (f"no learning signal: in {min(zero):.0%} or more of the prompt groups every completion got the same "
            "reward, so every advantage is zero and nothing is learned. Likely causes: " + "; ".join(causes))


def early_warning(stage: str, metrics: list[dict]) -> str | None:
    """During training, after the first EARLY_STEPS steps: the problem that would waste the rest of the run."""
    return no_grpo_signal(metrics) if stage == "grpo" else None


def warnings(stage: str, metrics: list[dict]) -> list[str]:
    """At the end of a run: each sign, in words, that it learned nothing."""
    found = []
    if stage == "grpo":
        found += [w for w in [no_grpo_signal(metrics)] if w]
        reward, kl = series(metrics, "reward"), series(metrics, "kl")
        if len(reward) >= 2 and trend(reward) == "flat" and not found:
            found.append("the mean reward did not move: check that the rewards can tell completions apart")
        if len(kl) >= 2 and max(abs(v) for v in kl) < 1e-6:
            found.append("KL to the base stayed at 0: the policy did not move (learning_rate, or no signal)")
    elif stage == "dpo":
        accuracy, margin = series(metrics, "rewards/accuracies"), series(metrics, "rewards/margins")
        if len(margin) >= 2 and margin[-1] <= 0 and (not accuracy or accuracy[-1] <= 0.5):
            found.append("the policy does not prefer the chosen replies (margin ≤ 0, accuracy ≤ 50%): "
                         "check learning_rate, train.dpo.beta and that chosen/rejected are not swapped")
    loss = series(metrics, "loss")
    if stage != "grpo" and len(loss) >= 5 and trend(loss) in ("flat", "rising"):  # too few logs say nothing
        found.append(f"train loss did not fall ({loss[0]:.4f} → {loss[-1]:.4f}): check learning_rate and the data")
    return found
