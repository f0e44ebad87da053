"""What `ftcli export` and `ftcli chat` read: a run directory or model folder, its chat template, the merged model."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftcli.data import templates
from ftcli.errors import BadInput


@dataclass
class Source:
    """What an export reads: a Hugging Face folder, or an adapter plus the base to merge it into."""
    kind: str                        # "run" or "model"
    root: Path                       # the run directory or the model folder
    model_dir: Path | None = None    # merged/ or model/ or the model folder itself
    adapter_dir: Path | None = None
    base_name: str | None = None
    dtype: str = "auto"
    load_in_4bit: bool = False
    template_name: str = "auto"
    system_prompt: str | None = None
    formats: list[str] = field(default_factory=list)
    gguf_quant: list[str] = field(default_factory=list)
    name: str = "model"


def resolve_source(target: Path) -> Source:
    """A run directory (recipe.resolved.yaml + merged/ | model/ | adapter/) or a HF model folder."""
    target = Path(target).expanduser()
    if not target.exists():
        raise BadInput(f"{target} does not exist", hint="give a run directory (runs/<name>-<timestamp>) or a model folder")
    manifest = target / "recipe.resolved.yaml"
    if manifest.is_file():
        data = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
        model, export = data.get("model") or {}, data.get("export") or {}
        src = Source(kind="run", root=target, base_name=model.get("name"), dtype=model.get("dtype", "auto"),
                     load_in_4bit=bool(model.get("load_in_4bit")),
                     template_name=str((data.get("template") or {}).get("name", "auto")),
                     system_prompt=(data.get("dataset") or {}).get("system_prompt"),
                     formats=list(export.get("formats") or []), gguf_quant=list(export.get("gguf_quant") or []),
                     name=target.name)
        for sub in ("merged", "model"):
            if (target / sub / "config.json").is_file():
                src.model_dir = target / sub
                break
        if (target / "adapter" / "adapter_config.json").is_file():
            src.adapter_dir = target / "adapter"
        if src.model_dir is None and src.adapter_dir is None:
            status = ((data.get("_run") or {}).get("status"))
            raise BadInput(f"run directory {target} has neither merged/, model/ nor adapter/"
                           + (f" (run status: {status})" if status else ""),
                           hint="export a run that finished training")
        return src
    if (target / "config.json").is_file():
        return Source(kind="model", root=target, model_dir=target, name=target.name)
    raise BadInput(f"{target} is neither a run directory (no recipe.resolved.yaml) nor a model folder (no config.json)")


def torch_dtype(name: str):
    # lazy: ftcli.models.pretrained loads torch (ftcli.recipe: pydantic)
    from ftcli.models import pretrained
    from ftcli.recipe import ModelSection

    return pretrained.pick_dtype(ModelSection(name="x", dtype=name if name in pretrained.DTYPES or name == "auto" else "auto"))


def run_template(src: Source, tokenizer, override: str | None):
    """The training chat template: the run's family (for its stop tokens) or the tokenizer's own."""
    name = override or src.template_name
    with contextlib.suppress(templates.ChatTemplateError):
        template = templates.resolve(name, tokenizer)
        # The template saved with the run wins over a family file edited since.
        saved = getattr(tokenizer, "chat_template", None)
        if override or not saved or saved == template.source:
            return template
    return templates.resolve("auto", tokenizer)


@contextlib.contextmanager
def hf_model_folder(src: Source, template_source_fn, keep_at: Path | None, log):
    """A HF folder with the merged model: merged/ or model/ as they are, else the adapter merged
    into the 16-bit base (for QLoRA: the original 16-bit weights, reloaded) at `keep_at` or a temp dir."""
    if src.model_dir is not None:
        yield src.model_dir
        return
    from transformers import AutoTokenizer

    from ftcli.export.merge import merge_adapter, save_merged  # lazy: it loads torch

    if not src.base_name:
        raise BadInput(f"{src.root}/recipe.resolved.yaml names no model.name to merge the adapter into")
    log(f"merging {src.adapter_dir} into the 16-bit base {src.base_name}"
        + (" (QLoRA: the original 16-bit weights, not the 4-bit ones)" if src.load_in_4bit else ""))
    merged = merge_adapter(src.base_name, src.adapter_dir, torch_dtype(src.dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(src.adapter_dir))
    tmp = None
    if keep_at is None:
        tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=src.root))
        keep_at = tmp / "merged"
    try:
        save_merged(merged, tokenizer, template_source_fn(tokenizer), keep_at)
        del merged
        yield keep_at
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
