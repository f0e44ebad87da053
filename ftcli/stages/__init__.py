"""Stages: SFT, DPO and GRPO behind one Stage protocol (base.py), each on a TRL trainer, with the trainer
arguments they share (trainer_args.py) and the NaN guards (guards.py).

    stage = stages.for_recipe(recipe)            # a fresh SftStage, DpoStage or GrpoStage
    train_set, eval_set = stage.build_datasets(recipe, train_rows, eval_rows, template, tokenizer, report)
    trainer = stage.build_trainer(setup)        # then train(), then stage.finish(trainer)

May import: ftcli.engine, ftcli.rewards, ftcli.models, ftcli.data, ftcli.recipe, ftcli.errors. Never export,
doctor, the runner or the CLI.
"""

from __future__ import annotations

from ftcli.recipe import Recipe
from ftcli.stages.base import Stage
from ftcli.stages.dpo import DpoStage
from ftcli.stages.grpo import GrpoStage
from ftcli.stages.sft import SftStage

STAGES: dict[str, type] = {"sft": SftStage, "dpo": DpoStage, "grpo": GrpoStage}


def for_recipe(recipe: Recipe) -> Stage:
    """A new instance of the stage that `train.stage` names."""
    return STAGES[recipe.train.stage]()
