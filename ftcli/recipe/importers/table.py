"""The mapping table every importer fills: each source key is mapped (to which recipe key), ignored (why), or
unsupported (what to do instead). Nothing is dropped without a row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ftcli.errors import BadInput

STATUSES = ("mapped", "ignored", "unsupported")
EMPTY = "empty: the tool's default, nothing to carry over"


@dataclass
class Row:
    key: str
    status: str  # one of STATUSES
    detail: str  # mapped: `recipe.key = value`; ignored: why; unsupported: what to do instead


@dataclass
class Mapping:
    """A recipe (plain data) being built from `data`, the source config, and the row of every source key."""

    tool: str
    data: dict
    recipe: dict = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)

    def put(self, key: str, target: str, value: Any, note: str = "") -> None:
        """recipe[target] = value (dotted target), recorded as the row of source key `key`."""
        node = self.recipe
        *parents, last = target.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.add(key, "mapped", f"{target} = {value!r}" + (f" ({note})" if note else ""))

    def add(self, key: str, status: str, detail: str) -> None:
        if key in self.rows and self.rows[key].status == "mapped" and status == "mapped":
            self.rows[key].detail += f"; {detail}"
            return
        self.rows[key] = Row(key, status, detail)

    def ignore(self, key: str, why: str) -> None:
        self.add(key, "ignored", why)

    def unsupported(self, key: str, todo: str) -> None:
        self.add(key, "unsupported", todo)

    def apply(self, direct: dict[str, tuple[str, Callable]], ignored: dict[str, str],
              unsupported: dict[str, str]) -> None:
        """The simple keys: copied (converted), ignored with a reason, or unsupported unless empty."""
        for key, value in self.data.items():
            if key in self.rows:
                continue
            if key in direct:
                target, convert = direct[key]
                if value is None:
                    self.ignore(key, EMPTY)
                    continue
                try:
                    self.put(key, target, convert(value))
                except ValueError as err:
                    self.unsupported(key, f"{err}; set {target} in the recipe")
            elif key in ignored:
                self.ignore(key, ignored[key])
            elif key in unsupported:
                if value in (None, False, "", [], {}):
                    self.ignore(key, EMPTY)
                else:
                    self.unsupported(key, unsupported[key])

    def finish(self) -> list[Row]:
        """Rows in the source's key order; a key no rule knows is unsupported (or ignored when empty)."""
        for key, value in self.data.items():
            if key not in self.rows:
                if value in (None, "", [], {}):
                    self.ignore(key, EMPTY)
                else:
                    self.unsupported(key, f"not a {self.tool} key ftcli import knows; it is left out, check "
                                          "whether the recipe needs an equivalent (docs/recipes.md)")
        order = list(self.data)
        return sorted(self.rows.values(), key=lambda r: (order.index(r.key.split(".")[0].split("[")[0])
                                                         if r.key.split(".")[0].split("[")[0] in order else 1_000, 0))


def refuse(tool: str, reason: str, hint: str) -> BadInput:
    return BadInput(f"cannot import this {tool} config: {reason}", hint=hint)


# ----------------------------------------------------------------------------------------- value converters


def number(value: Any) -> float:
    """YAML 1.1 reads `2e-5` (no dot) as a string: accept it as the number it is."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None


def whole(value: Any) -> int:
    result = number(value)
    if result != int(result):
        raise ValueError(f"{value!r} is not a whole number")
    return int(result)


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(f"{value!r} is not true or false")


def text(value: Any) -> str:
    return str(value)


def optimizer(value: Any) -> str:
    from transformers.training_args import OptimizerNames

    if str(value) not in {o.value for o in OptimizerNames}:
        raise ValueError(f"optimizer {value!r} is not one transformers knows")
    return str(value)


def scheduler(value: Any) -> str:
    from transformers.trainer_utils import SchedulerType

    if str(value) not in {s.value for s in SchedulerType}:
        raise ValueError(f"scheduler {value!r} is not one transformers knows")
    return str(value)


def report_to(value: Any) -> str | list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if names in (["none"], []):
        return "none"
    unknown = [n for n in names if n not in ("tensorboard", "wandb", "mlflow")]
    if unknown:
        raise ValueError(f"report_to {unknown} is not one of tensorboard, wandb, mlflow")
    return names


def targets(value: Any) -> str | list[str]:
    """LoRA target modules: all / all-linear, a comma-separated string, or a list."""
    if value in ("all", "all-linear"):
        return "all-linear"
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def dtype(value: Any) -> str:
    known = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
             "float32": "float32", "fp32": "float32", "auto": "auto"}
    if str(value) not in known:
        raise ValueError(f"dtype {value!r} is not one of {', '.join(known)}")
    return known[str(value)]


def precision(m: Mapping, bf16_key: str = "bf16", fp16_key: str = "fp16") -> None:
    """bf16 / fp16 flags -> model.dtype (auto picks bf16 on a GPU that has it, as `bf16: auto` does)."""
    bf16, fp16 = m.data.get(bf16_key), m.data.get(fp16_key)
    if bf16_key in m.data:
        if bf16 in (True, "true", "True"):
            m.put(bf16_key, "model.dtype", "bfloat16")
        elif bf16 == "auto":
            m.put(bf16_key, "model.dtype", "auto", "bf16 where the GPU has it, as in the source")
        else:
            m.ignore(bf16_key, EMPTY if bf16 is None else "off: model.dtype auto decides")
    if fp16_key in m.data:
        if fp16 in (True, "true", "True"):
            m.put(fp16_key, "model.dtype", "float16")
        else:
            m.ignore(fp16_key, EMPTY if fp16 is None else "off")


# transformers' TrainingArguments keys, which LLaMA-Factory and TRL configs both pass through unchanged.
TRAINING_ARGUMENTS = {
    "per_device_train_batch_size": ("train.per_device_train_batch_size", whole),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", whole),
    "learning_rate": ("train.learning_rate", number),
    "num_train_epochs": ("train.num_train_epochs", number),
    "max_steps": ("train.max_steps", whole),
    "lr_scheduler_type": ("train.lr_scheduler_type", scheduler),
    "warmup_ratio": ("train.warmup_ratio", number),
    "weight_decay": ("train.weight_decay", number),
    "max_grad_norm": ("train.max_grad_norm", number),
    "optim": ("train.optim", optimizer),
    "logging_steps": ("train.logging_steps", whole),
    "save_steps": ("train.save_steps", whole),
    "save_total_limit": ("train.save_total_limit", whole),
    "eval_steps": ("train.eval_steps", whole),
    "seed": ("train.seed", whole),
    "report_to": ("train.report_to", report_to),
}
