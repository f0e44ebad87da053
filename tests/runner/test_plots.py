"""loss.png shows the stage's own key metric and the run's name; `runs compare` draws every run."""

import matplotlib.figure
import pytest

from ftcli.runner import plots
from helpers.fake_runs import fake_run


@pytest.fixture
def saved(monkeypatch):
    figures = []
    original = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return figures


def test_a_dpo_loss_png_has_a_preference_panel_and_the_run_name(tmp_path, saved):
    metrics = [{"step": s, "loss": 0.7 / s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5 + 0.05 * s}
               for s in range(1, 6)]
    out = plots.plot_run(metrics, tmp_path / "loss.png", stage="dpo", title="dpo-20261207")
    assert out.is_file() and len(saved[0].axes) == 2
    assert saved[0]._suptitle.get_text() == "dpo-20261207 (dpo)"
    assert [line.get_label() for line in saved[0].axes[1].lines] == ["reward margin", "reward accuracy"]


def test_a_grpo_loss_png_plots_the_reward_and_sft_keeps_one_panel(tmp_path, saved):
    grpo = [{"step": s, "loss": 0.0, "reward": 0.1 * s, "frac_reward_zero_std": 0.5} for s in range(1, 4)]
    plots.plot_run(grpo, tmp_path / "g.png", stage="grpo", title="g")
    assert [line.get_label() for line in saved[0].axes[1].lines] == ["mean reward", "groups with no spread"]
    plots.plot_run([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], tmp_path / "s.png", stage="sft", title="s")
    assert len(saved[1].axes) == 1
    assert plots.plot_run([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_compare_draws_one_line_per_run(tmp_path, saved):
    from ftcli.runner import catalog

    fake_run(tmp_path, "a")
    fake_run(tmp_path, "b", stage="grpo", metrics=[{"step": 1, "reward": 0.0}, {"step": 2, "reward": 0.5}])
    plots.plot_compare(catalog.list_runs(tmp_path), tmp_path / "cmp.png")
    assert sorted(line.get_label() for line in saved[0].axes[0].lines) == ["a (train loss)", "b (mean reward)"]
