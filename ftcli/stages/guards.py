"""Stop a run the moment its loss or gradient norm stops being a finite number.

Also hosts test-only fault injection (`FTCLI_TEST_FAULT`), so that the NaN guard and exact
resume after a hard kill are tested on the real runner: `nan-loss-at-step:N` poisons the
loss of optimizer step N, `sigkill-at-step:N` kills the process after step N is saved
(`sigint-at-step:N` and `sigterm-at-step:N` interrupt it there, as Ctrl-C and `kill` do).
"""

from __future__ import annotations

import math
import os
import signal

import torch
from transformers import TrainerCallback

FAULT_ENV = "FTCLI_TEST_FAULT"


def injected_fault() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return None
    kind, _, step = spec.partition(":")
    return (kind, int(step)) if step.isdigit() else None


class NonFiniteLoss(Exception):
    """Raised inside the training loop; train.py turns it into a TrainingFailed with advice."""

    def __init__(self, step: int, what: str, value: float):
        super().__init__(f"{what} became {value} at optimizer step {step}")
        self.step, self.what, self.value = step, what, value


def check_loss(loss: torch.Tensor, step: int) -> torch.Tensor:
    """Called on every micro-batch loss before backward (one tiny device sync)."""
    fault = injected_fault()
    if fault == ("nan-loss-at-step", step):
        loss = loss * float("nan")
    value = loss.detach().float()
    if not torch.isfinite(value).all():
        raise NonFiniteLoss(step, "the loss", float(value.reshape(-1)[0]))
    return loss


class GradNormGuard(TrainerCallback):
    """Before each optimizer step: the gradient norm of the trainable weights must be finite."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        if not math.isfinite(norm.item()):
            raise NonFiniteLoss(state.global_step + 1, "the gradient norm", norm.item())


FAULT_SIGNALS = {"sigkill-at-step": signal.SIGKILL, "sigint-at-step": signal.SIGINT,
                 "sigterm-at-step": signal.SIGTERM}


class KillAfterSave(TrainerCallback):
    """Test-only: send ourselves SIGKILL, SIGINT (as Ctrl-C does) or SIGTERM right after the checkpoint of step N
    is complete."""

    def on_save(self, args, state, control, **kwargs):
        fault = injected_fault()
        if fault and fault[0] in FAULT_SIGNALS and fault[1] == state.global_step:
            os.kill(os.getpid(), FAULT_SIGNALS[fault[0]])


LIKELY_CAUSES = ("a learning rate that is too high (try half of train.learning_rate)",
                 "fp16 overflow (use model.dtype: bfloat16 where the GPU supports it)",
                 "a bad data row (very long, empty, or unusual tokens) in this step's batch")
