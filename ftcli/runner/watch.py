"""A Trainer callback that says, early and once, when a run is learning nothing (runner/signals.py decides)."""

from __future__ import annotations

from transformers import TrainerCallback

from ftcli.runner import signals


class LearningWatch(TrainerCallback):
    """After the first `after_steps` optimizer steps, log the stage's early warning once (rank 0)."""

    def __init__(self, stage: str, log, after_steps: int = signals.EARLY_STEPS):
        self.stage, self.log, self.after_steps = stage, log, after_steps
        self.logs: list[dict] = []
        self.done = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.done or not logs or not state.is_world_process_zero:
            return
        self.logs.append(dict(logs))
        if state.global_step >= self.after_steps:
            self.done = True
            warning = signals.early_warning(self.stage, self.logs)
            if warning:
                self.log(f"warning: {warning}")
