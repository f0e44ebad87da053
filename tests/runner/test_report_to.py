"""train.report_to: metrics reach TensorBoard by default and W&B / MLflow when asked, all offline."""

import time

import pytest

from ftcli import recipe
from ftcli.errors import BadInput
from ftcli.runner import train as training
from helpers.runs import write_recipe


def _run(tmp_path, **train):
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 2, **train})
    return training.run(recipe.load(path))


def test_tensorboard_events_are_written_by_default_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path)
    events = list((result.run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under RUN_DIR/logs"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    logged = [m["loss"] for m in result.metrics if "loss" in m]
    assert losses == pytest.approx(logged, rel=1e-6)


def test_none_writes_no_events(tmp_path):
    result = _run(tmp_path, report_to="none")
    assert not list(result.run_dir.rglob("events.out.tfevents.*"))


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    import wandb

    try:
        _run(tmp_path, report_to=["wandb"])
    finally:
        wandb.finish()  # the trainer leaves its run open
    logs = list((tmp_path / "wb").rglob("offline-run-*/run-*.wandb"))
    assert logs, "no offline W&B run"
    # W&B's service process writes the run file on its own after finish(); on a loaded machine it lags behind.
    for _ in range(60):
        if b"train/loss" in logs[0].read_bytes():
            break
        time.sleep(1)
    assert b"train/loss" in logs[0].read_bytes()


def test_mlflow_file_store_holds_the_metrics(tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for offline use behind this
    _run(tmp_path, report_to=["mlflow"])
    loss_files = [p for p in store.rglob("loss") if p.parent.name == "metrics"]
    assert loss_files and len(loss_files[0].read_text().splitlines()) == 2  # one line per logged step


def test_a_missing_integration_is_bad_input_before_anything_loads(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    path = write_recipe(tmp_path / "r.yaml", train={"max_steps": 2, "report_to": ["wandb"]})
    with pytest.raises(BadInput, match="wandb is not installed"):
        training.run(recipe.load(path))
    assert not (tmp_path / "run").exists()
