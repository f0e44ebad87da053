"""Figures of runs: loss.png (the loss and the stage's own key metric, titled with the run's name) and the
`ftcli runs compare` plot of several runs on one axis."""

from __future__ import annotations

from pathlib import Path

# The panel beside the loss: GRPO learns through its reward, DPO through its margin and accuracy.
STAGE_PANELS = {"grpo": ("reward", [("reward", "mean reward"), ("frac_reward_zero_std", "groups with no spread")]),
                "dpo": ("preference", [("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")])}


def _points(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    return [(m["step"], float(m[key])) for m in metrics if key in m and "train_runtime" not in m]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(metrics: list[dict], out: Path, *, stage: str = "sft", title: str = "") -> Path | None:
    """loss.png: train and eval loss per step, and for DPO and GRPO a second panel with their key metric."""
    train, evals = _points(metrics, "loss"), _points(metrics, "eval_loss")
    ylabel, curves = STAGE_PANELS.get(stage, ("", []))
    curves = [(key, label, _points(metrics, key)) for key, label in curves]
    curves = [c for c in curves if c[2]]
    if not (train or evals or curves):
        return None
    plt = _pyplot()
    panels = 1 + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.5), dpi=100, squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set(xlabel="optimizer step", ylabel="loss")
    if curves:
        side = axes[0][1]
        for _, label, points in curves:
            side.plot(*zip(*points), label=label)
        side.set(xlabel="optimizer step", ylabel=ylabel)
    for a in axes[0]:
        a.grid(alpha=0.3)
        if a.lines:
            a.legend()
    fig.suptitle(f"{title} ({stage})" if title else stage)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def key_metric(stage: str) -> tuple[str, str]:
    """(metrics key, label) that best says how a run of this stage went: reward for GRPO, loss otherwise."""
    return ("reward", "mean reward") if stage == "grpo" else ("loss", "train loss")


def plot_compare(runs, out: Path) -> Path:
    """One figure of several runs (catalog.RunInfo): each run's key metric per step, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    labels = set()
    for run in runs:
        key, label = key_metric(run.stage)
        points = _points(run.metrics, key)
        if points:
            ax.plot(*zip(*points), label=f"{run.name} ({label})")
            labels.add(label)
    ax.set(xlabel="optimizer step", ylabel=" / ".join(sorted(labels)) or "loss", title="ftcli runs compare")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

