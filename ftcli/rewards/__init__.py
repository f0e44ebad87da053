"""GRPO rewards declared in the recipe: schema, validation before training, and the scoring functions.

A recipe lists rewards under `train.grpo.rewards`, each with a `type` and a `weight`:

    rewards:
      - {type: numeric_match, column: answer, tolerance: 1.0e-6}
      - {type: format, weight: 0.5}
      - {type: function, function: "my_pkg.rewards:brevity"}

`build(specs, columns)` checks every reward against the dataset (columns exist, user modules
import, signatures fit) and returns TRL reward callables: `fn(prompts, completions, **columns)
-> list[float]`, each with a `__name__` under which TRL logs `rewards/<name>/mean`.
ftcli/recipe/rewards.py holds the declarations (part of the recipe's schema), scoring.py
the pure scoring functions, callables.py the TRL callables and their checks, sandbox.py runs generated
code for `code_tests` inside bubblewrap (isolation.py builds the sandbox, sandbox_child.py runs in it,
cases.py keeps the expected answers outside and judges).

May import: ftcli.recipe (the reward specs are schema and live there), ftcli.errors.
"""

from ftcli.rewards.callables import Reward, build, import_function, weights
from ftcli.rewards.isolation import SandboxUnavailable, require as require_sandbox
from ftcli.rewards.scoring import completion_text, extract_answer, parse_number
from ftcli.recipe.rewards import REWARD_TYPES, RewardSpec, RewardSpecError, parse_specs

__all__ = ["REWARD_TYPES", "Reward", "RewardSpec", "RewardSpecError", "SandboxUnavailable", "build",
           "completion_text", "extract_answer", "import_function", "parse_number", "parse_specs", "require_sandbox",
           "weights"]
