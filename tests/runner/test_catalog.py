"""The run catalogue: which runs there are, which is the newest finished one, and `latest` as a target."""

import pytest

from ftcli.errors import BadInput
from ftcli.runner import catalog
from helpers.fake_runs import fake_run


def test_runs_are_listed_newest_first_with_their_facts(tmp_path):
    fake_run(tmp_path, "old", age_seconds=7200, exports=("f16",))
    fake_run(tmp_path, "new", stage="grpo", metrics=[{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.4}],
             max_steps=2)
    (tmp_path / "not-a-run").mkdir()  # no manifest: not listed
    runs = catalog.list_runs(tmp_path)
    assert [r.name for r in runs] == ["new", "old"]
    assert runs[0].stage == "grpo" and runs[0].steps == 2 and runs[0].max_steps == 2
    assert runs[1].exports == ["f16"] and catalog.age_of(runs[1]) == "2 h ago" and catalog.age_of(runs[1], True) == "2h"


def test_latest_is_the_newest_finished_run_and_says_so(tmp_path):
    fake_run(tmp_path, "finished", age_seconds=60)
    fake_run(tmp_path, "crashed", status="failed: CUDA out of memory")
    path, note = catalog.resolve(None, tmp_path, command="export")
    assert path == tmp_path / "finished" and str(path) in note and "newest finished run" in note
    assert catalog.resolve("latest", tmp_path, command="export")[0] == path
    assert catalog.resolve("some/run", tmp_path, command="export") == (catalog.Path("some/run"), None)


def test_no_finished_run_is_a_clear_bad_input(tmp_path):
    with pytest.raises(BadInput) as err:
        catalog.resolve(None, tmp_path / "runs", command="export")
    assert "ftcli export RUN_DIR" in err.value.hint
    fake_run(tmp_path / "runs", "running-one", status="running")
    with pytest.raises(BadInput, match="running-one is running"):
        catalog.resolve(None, tmp_path / "runs", command="export")


def test_a_metrics_line_cut_short_by_a_crash_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo', encoding="utf-8")
    assert catalog.read_metrics(path) == [{"step": 1, "loss": 1.0}]
