"""What every stage offers the runner (the Stage protocol), and what the runner hands a stage (TrainerSetup)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ftcli.recipe import KERNEL_OPS, Recipe


@dataclass
class TrainerSetup:
    """Everything a stage needs to build its TRL trainer."""

    recipe: Recipe
    model: object
    tokenizer: object
    template: object
    train_set: object
    eval_set: object | None
    checkpoints_dir: str
    precision: dict
    report_to: list[str]
    callbacks: list = field(default_factory=list)
    log: Callable[[str], None] = lambda _: None


class Stage(Protocol):
    """One post-training stage (sft, dpo, grpo) behind the runner. A new instance serves one run."""

    name: str

    def build_datasets(self, recipe: Recipe, train_rows: list, eval_rows: list, template, tokenizer,
                       report) -> tuple:
        """(train, eval or None) datasets.Dataset in the form the stage's trainer takes; raises DataError."""

    def build_trainer(self, setup: TrainerSetup):
        """The stage's TRL trainer, ready to `train()`."""

    def kernel_ops(self, requested, sharded: bool) -> tuple[object, str | None]:
        """The kernel ops to patch in, from `train.kernels`, and a note for the log when some are left out."""

    def finish(self, trainer) -> None:
        """Undo what build_trainer put on the model that must not be saved with it."""


def without_fused_loss(requested):
    """`train.kernels` with the fused linear cross-entropy left out (False and None stay as they are)."""
    if requested in (False, None):
        return requested
    chosen = KERNEL_OPS if requested in ("auto", True) else requested
    return [op for op in chosen if op != "fused_linear_ce"]
