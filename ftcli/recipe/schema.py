"""The recipe's schema: one pydantic model per section, unknown keys forbidden, cross-field rules.

Short aliases such as `lr` are declared per section (`Section.aliases`); loading.py renames them,
so everything downstream sees canonical names only.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ftcli.recipe.rewards import RewardSpec, RewardSpecError, parse_specs

DatasetFormat = Literal[
    "auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "preference", "prompt"
]
ExportFormat = Literal["safetensors", "gguf", "ollama", "adapter"]
# The kernel ops train.kernels may list, in the order ftcli.engine.patch applies them.
KERNEL_OPS = ("rms_norm", "rope", "window_attention", "swiglu", "geglu", "fused_linear_ce", "lora_linear")


class Section(BaseModel):
    """Every recipe section forbids unknown keys; `aliases` maps short names to canonical ones.

    A boolean is accepted only where the field's type says bool (or `bool_shorthands` lists it): YAML reads
    `yes`, `no`, `on` and `off` as booleans, and pydantic would quietly turn `max_steps: yes` into 1.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    aliases: ClassVar[dict[str, str]] = {}
    bool_shorthands: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_stray_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name not in cls.bool_shorthands \
                and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expects {_describe(cls.model_fields[info.field_name].annotation)}, not a boolean "
                             "(YAML reads yes/no/on/off/true/false as booleans; quote the value if you meant text)")
        return value


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in typing.get_args(annotation))
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _admits_bool(a) for a in typing.get_args(annotation))


def _describe(annotation: Any) -> str:
    """`int | None` -> "a whole number"; `Literal["auto", "none"] | list[str]` -> "one of auto, none or a list"."""
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (list, tuple):
        return "a list"
    if typing.get_origin(annotation) is dict:
        return "a mapping"
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if members:
        return " or ".join(dict.fromkeys(_describe(a) for a in members if a is not type(None)))
    return {int: "a whole number", float: "a number", str: "text"}.get(annotation, getattr(annotation, "__name__", "?"))


class ModelSection(Section):
    aliases = {"path": "name", "id": "name", "max_length": "max_seq_length", "4bit": "load_in_4bit"}

    name: str = Field(description="Hugging Face id, local folder, or builtin:<name>")
    dtype: Literal["auto", "bfloat16", "float16", "float32", "float64"] = Field(
        "auto", description="auto = bf16 on a GPU that has it, fp32 on the CPU; float64 is for numerics checks")
    load_in_4bit: bool = False
    max_seq_length: int = Field(2048, gt=0)
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    adapter: str | None = Field(None, description="a LoRA adapter folder to keep training, e.g. runs/sft/adapter "
                                "(SFT -> DPO -> GRPO); its own rank and targets are used")
    doctor: Literal["fix", "warn", "off"] = Field(
        "fix", description="ftcli doctor at training start: fix = apply safe fixes in memory and stop on other "
                           "errors; warn = only report; off = skip")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_aliases(cls, value: Any) -> Any:
        short = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
        return short.get(value, value) if isinstance(value, str) else value


class TemplateSection(Section):
    name: str = Field("auto", description="a family in templates/, auto (the tokenizer's own), or a .jinja path")
    train_on: Literal["assistant", "all"] = "assistant"


class DatasetSection(Section):
    aliases = {"name": "path", "type": "format", "column_map": "columns"}

    path: str
    format: DatasetFormat = "auto"
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict, description="our column name -> your column name")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    skip_invalid: bool = False
    max_samples: int | None = Field(None, gt=0)
    system_prompt: str | None = None


class LoraSection(Section):
    aliases = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "targets": "target_modules"}

    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False


DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL 1.15-1.16
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


class DpoSection(Section):
    """train.dpo: the preference loss (TRL DPOTrainer). With LoRA the reference is the base model."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference model")
    loss_type: str | list[str] = Field("sigmoid", description=f"one of {', '.join(DPO_LOSS_TYPES)}, or a list")
    loss_weights: list[float] | None = Field(None, description="weights when loss_type is a list")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="robust / exo_pair: chance a label is flipped")
    max_prompt_length: int | None = Field(None, gt=0, description="prompt tokens kept (from the end); None = no cut")
    max_completion_length: int | None = Field(None, gt=0, description="reply tokens kept (from the start)")
    precompute_ref_log_probs: bool = Field(False, description="score the reference once before training")

    @field_validator("loss_type")
    @classmethod
    def _known_losses(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if name not in DPO_LOSS_TYPES:
                close = difflib.get_close_matches(name, DPO_LOSS_TYPES, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; choose from {', '.join(DPO_LOSS_TYPES)}"
                raise ValueError(f"unknown DPO loss {name!r}{hint}")
        if isinstance(value, list) and not value:
            raise ValueError("loss_type is an empty list")
        return value

    @model_validator(mode="after")
    def _loss_options(self) -> "DpoSection":
        names = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if self.loss_weights is not None and len(self.loss_weights) != len(names):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(names)} loss types")
        if "exo_pair" in names and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        return self


class GrpoSection(Section):
    """train.grpo: group-relative policy optimisation (TRL GRPOTrainer) with rewards declared here."""

    aliases = {"generations": "num_generations", "kl_beta": "beta"}
    bool_shorthands = frozenset({"scale_rewards"})  # true = group, false = none (TRL's older spelling)

    num_generations: int = Field(8, ge=2, description="completions sampled per prompt (the group)")
    max_prompt_length: int = Field(512, gt=0, description="longer prompts are skipped and counted")
    max_completion_length: int = Field(256, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0, description="KL penalty towards the reference (0 = none, as in DAPO)")
    epsilon: float = Field(0.2, gt=0, description="lower clip of the probability ratio")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip; None = epsilon")
    loss_type: Literal[GRPO_LOSS_TYPES] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="group: advantage = (r - group mean) / group std; none: no division")
    num_iterations: int = Field(1, ge=1, description="optimisation passes per generated batch")
    mask_truncated_completions: bool = False
    sequences_per_forward: int | Literal["auto", "all"] = Field(
        "auto", description="completions per training forward/backward (memory): auto ~4096 tokens; all = TRL's")
    rewards: list[RewardSpec] = Field(default_factory=list)

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _bool_scale(cls, value: Any) -> Any:
        return {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("sequences_per_forward")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a positive number of sequences, auto or all")
        return value

    @field_validator("rewards", mode="before")
    @classmethod
    def _rewards(cls, value: Any) -> Any:
        try:
            return parse_specs(value) if value is not None else []
        except RewardSpecError as err:  # one located line per problem, like the cross-field rules
            raise ValueError(" | ".join(f"[train.grpo.rewards] {p}" for p in err.problems)) from None


class TrainSection(Section):
    aliases = {
        "lr": "learning_rate",
        "batch_size": "per_device_train_batch_size",
        "micro_batch_size": "per_device_train_batch_size",
        "grad_accum": "gradient_accumulation_steps",
        "gradient_accumulation": "gradient_accumulation_steps",
        "epochs": "num_train_epochs",
        "num_epochs": "num_train_epochs",
        "scheduler": "lr_scheduler_type",
        "warmup": "warmup_ratio",
        "optimizer": "optim",
        "steps": "max_steps",
    }

    stage: Literal["sft", "dpo", "grpo"] = "sft"
    max_steps: int = Field(-1, description="-1 = run num_train_epochs")
    num_train_epochs: float = Field(1.0, gt=0)
    per_device_train_batch_size: int = Field(2, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    optim: str = "adamw_torch"
    memory: Literal["lean", "minimal", "fast"] = Field(
        "lean", description="lean: recompute activations, layer inputs offloaded to CPU; minimal: lean with "
                            "attention and MLP recomputed as separate blocks (least GPU memory, slower); fast: keep "
                            "activations of as many layers as memory_budget_gib allows (docs/speed.md)")
    memory_budget_gib: float | None = Field(
        None, gt=0, description="fast: GPU memory the run may use; None = 90% of what the GPU has free for it")
    gradient_checkpointing: Literal["auto", "offload"] | bool = Field(
        "auto", description="auto: from train.memory on a GPU, off on the CPU; true: recompute every layer; "
                            "offload: true + layer inputs kept in pinned CPU memory; false: never recompute")
    packing: Literal["auto"] | bool = Field(
        "auto", description="SFT: pack sequences into rows of max_seq_length, padding-free. auto: where packed rows run "
                            "as one varlen FlashAttention call (CUDA, bf16/fp16, kernels on); true: also elsewhere, "
                            "on transformers' block-diagonal mask (exact, slower)")
    seed: int = 42
    report_to: Literal["auto", "none"] | list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        "auto", description="where metrics also go: auto = TensorBoard (RUN_DIR/logs); a list of tensorboard, wandb, "
                            "mlflow (each configured by its own environment: WANDB_MODE, MLFLOW_TRACKING_URI); none")
    logging_steps: int = Field(1, gt=0)
    save_steps: int | None = Field(None, gt=0, description="None = save only at the end")
    save_total_limit: int | None = Field(None, gt=0, description="keep only the newest N checkpoints")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="how several processes share the work")
    kernels: Literal["auto"] | bool | list[str] = Field(
        "auto", description="auto: Triton on CUDA (references on CPU); true: Triton required; false; or a list of ops")

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_choice(cls, value):
        if isinstance(value, bool) or value in ("auto", "offload"):
            return value
        raise ValueError("choose auto, true, false or offload")

    @field_validator("kernels")
    @classmethod
    def _known_ops(cls, value):
        if isinstance(value, list):
            unknown = [op for op in value if op not in KERNEL_OPS]
            if unknown:
                raise ValueError(f"unknown kernel ops {unknown}; choose from {', '.join(KERNEL_OPS)}")
        return value
    eval_steps: int | None = Field(None, gt=0, description="None = evaluate at the end when there is an eval split")
    dpo: DpoSection = Field(default_factory=DpoSection)
    grpo: GrpoSection = Field(default_factory=GrpoSection)

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        from transformers.trainer_utils import SchedulerType

        known = [s.value for s in SchedulerType]
        if value not in known:
            raise ValueError(f"unknown scheduler {value!r}; choose one of: {', '.join(known)}")
        return value

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        from transformers.training_args import OptimizerNames

        known = [o.value for o in OptimizerNames]
        if value not in known:
            close = difflib.get_close_matches(value, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown optimizer {value!r}{hint}")
        return value


class ExportSection(Section):
    formats: list[ExportFormat] = Field(default_factory=list, description="empty = no export")
    gguf_quant: list[str] = Field(default_factory=lambda: ["q8_0"])


class Recipe(Section):
    model: ModelSection
    template: TemplateSection = Field(default_factory=TemplateSection)
    dataset: DatasetSection
    lora: LoraSection | None = None
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportSection = Field(default_factory=ExportSection)
    output_dir: str = Field("runs/{name}-{timestamp}", description="{name} and {timestamp} are filled in")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "Recipe":
        problems = []
        if self.model.load_in_4bit and self.lora is None and self.model.adapter is None:
            problems.append(
                ("model.load_in_4bit", "4-bit (QLoRA) weights cannot be trained directly: add a `lora:` "
                 "section (e.g. `lora: {r: 16}`) or set model.load_in_4bit: false")
            )
        stage_formats = {"sft": {"preference", "prompt"}, "dpo": {"messages", "sharegpt", "alpaca",
                         "prompt_completion", "text", "prompt"}, "grpo": {"messages", "sharegpt", "alpaca",
                         "prompt_completion", "text", "preference"}}
        needs = {"sft": "a supervised format (messages, sharegpt, alpaca, prompt_completion, text)",
                 "dpo": "format: preference", "grpo": "format: prompt"}
        if self.dataset.format in stage_formats[self.train.stage]:
            problems.append(
                ("dataset.format", f"a `{self.dataset.format}` dataset does not fit train.stage: "
                 f"{self.train.stage}, which needs {needs[self.train.stage]}")
            )
        if self.model.adapter is not None and self.lora is not None:
            problems.append(("lora", "model.adapter continues an existing LoRA adapter with its own rank and "
                             "targets: remove the `lora:` section (or drop model.adapter to start a new adapter)"))
        if self.train.stage == "grpo":
            grpo, t = self.train.grpo, self.train
            if not grpo.rewards:
                problems.append(("train.grpo", "GRPO needs at least one reward: add `rewards:` under train.grpo, "
                                 "e.g. rewards: [{type: numeric_match, column: answer}]"))
            if (t.per_device_train_batch_size * t.gradient_accumulation_steps) % grpo.num_generations:
                problems.append(("train.per_device_train_batch_size", "per_device_train_batch_size x "
                                 f"gradient_accumulation_steps ({t.per_device_train_batch_size} x "
                                 f"{t.gradient_accumulation_steps}) must be a multiple of train.grpo.num_generations "
                                 f"({grpo.num_generations}): each step trains on whole groups of completions"))
        if self.train.packing is True and self.train.stage != "sft":
            problems.append(("train.packing", f"packing applies to SFT; train.stage {self.train.stage} trains on "
                             "pairs or generated completions (remove train.packing)"))
        if self.train.max_steps == 0 or self.train.max_steps < -1:
            problems.append(("train.max_steps", "must be a positive number of steps, or -1 to run num_train_epochs"))
        if self.train.distributed == "fsdp" and self.model.load_in_4bit:
            problems.append(("train.distributed", "QLoRA under FSDP is not supported: bitsandbytes 4-bit weights "
                             "cannot be sharded here; use train.distributed: ddp (each GPU holds the small 4-bit "
                             "base) or drop model.load_in_4bit"))
        if problems:
            # Raised as ValueError so pydantic reports it like any other field error.
            raise ValueError(" | ".join(f"[{path}] {msg}" for path, msg in problems))
        return self


def section_class(model: type[BaseModel], key: str) -> type[Section] | None:
    """The Section class of field `key` of `model`, if that field holds a section."""
    field = model.model_fields.get(key)
    if field is None:
        return None
    annotation = field.annotation
    for candidate in getattr(annotation, "__args__", (annotation,)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None
