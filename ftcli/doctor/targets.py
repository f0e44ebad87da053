"""Build a `Subject` from what the user points the doctor at: a model folder (weights optional),
a builtin, a Hugging Face id, a recipe, a run directory, a GGUF file, or live objects."""

from __future__ import annotations

from pathlib import Path

import yaml

from ftcli import recipe as recipe_mod
from ftcli.data import formats, templates
from ftcli.doctor import weights as weights_mod
from ftcli.doctor.readers import pick_template, read_json, template_variants, token_str
from ftcli.doctor.subject import Subject
from ftcli.errors import BadInput
from ftcli.models import builtin, offline, pretrained

HUB_PATTERNS = ["*.json", "*.jinja", "tokenizer.model"]


def from_objects(model, tokenizer, template=None, recipe=None, *, kind: str = "training",
                 samples: list | None = None) -> Subject:
    """A subject for live objects: the tokenizer (with its in-memory state), model and ChatTemplate."""
    config = generation = None
    if model is not None:
        try:
            config = model.config.to_dict()
        except Exception:  # noqa: BLE001
            config = None
        gen = getattr(model, "generation_config", None)
        generation = gen.to_dict() if gen is not None else None
    tc = {}
    for key, value in (getattr(tokenizer, "init_kwargs", None) or {}).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            tc[key] = value
    source = getattr(template, "source", None) if template is not None else getattr(tokenizer, "chat_template", None)
    variants = template_variants(source)
    subject = Subject(name=getattr(tokenizer, "name_or_path", "") or "model", kind=kind, tokenizer_config=tc,
                      generation_config=generation, config=config, template=pick_template(variants),
                      variants=variants, tokenizer=tokenizer, model=model, recipe=recipe, chat=template,
                      samples=list(samples or []))
    if model is not None:
        try:
            subject.weights = weights_mod.ModelWeights(model)
        except Exception as err:  # noqa: BLE001
            subject.notes.append(f"could not read the embeddings ({err})")
    return subject


def load_live_tokenizer(folder: Path, notes: list[str]):
    """The folder's tokenizer through transformers, or through `tokenizers` alone; None if neither works."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    import logging

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001
        first = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if (folder / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer
                from transformers import PreTrainedTokenizerFast

                tc = read_json(folder / "tokenizer_config.json") or {}
                kwargs = {k: token_str(tc.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                          if token_str(tc.get(k))}
                kwargs.update({k: tc[k] for k in ("model_max_length", "clean_up_tokenization_spaces")
                               if isinstance(tc.get(k), (int, float, bool))})
                tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(folder / "tokenizer.json")),
                                              **kwargs)
                if isinstance(tc.get("chat_template"), str):
                    tok.chat_template = tc["chat_template"]
                notes.append(f"transformers could not load the tokenizer ({first}); used tokenizer.json directly")
                return tok
            except Exception as err2:  # noqa: BLE001
                first += f"; tokenizers: {type(err2).__name__}: {err2}"
        notes.append(f"the tokenizer could not be loaded ({first[:200]}): encoding checks skipped")
        return None
    finally:
        hf_logging.set_verbosity(level)


def from_folder(folder: str | Path, *, recipe=None, kind: str = "folder", load_tokenizer: bool = True,
                weights_folder: Path | None = None) -> Subject:
    folder = Path(folder)
    notes: list[str] = []
    tc = read_json(folder / "tokenizer_config.json") or {}
    variants = template_variants(tc.get("chat_template"))
    jinja = folder / "chat_template.jinja"
    file_differs = False
    template = pick_template(variants)
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        file_differs = template is not None and template != text
        variants = {**variants, "default": text}
        template = text
    elif (folder / "chat_template.json").is_file():
        extra = template_variants((read_json(folder / "chat_template.json") or {}).get("chat_template"))
        if extra:
            file_differs = template is not None and pick_template(extra) != template
            variants = {**variants, **extra}
            template = pick_template(extra)
    subject = Subject(
        name=str(folder), kind=kind, folder=folder, tokenizer_config=tc,
        tokenizer_json=read_json(folder / "tokenizer.json"),
        special_tokens_map=read_json(folder / "special_tokens_map.json") or {},
        added_tokens_json=read_json(folder / "added_tokens.json") or {},
        generation_config=read_json(folder / "generation_config.json"),
        config=read_json(folder / "config.json"), template=template, variants=variants,
        template_file_differs=file_differs, recipe=recipe, notes=notes)
    if load_tokenizer:
        subject.tokenizer = load_live_tokenizer(folder, notes)
        if subject.tokenizer is not None and template is not None:
            subject.tokenizer.chat_template = template
    w = weights_mod.from_folder(weights_folder or folder)
    if w is None:
        notes.append("no weights found (a tokenizer-only folder): embedding checks skipped")
    subject.weights = w
    if subject.config is None:
        notes.append("no config.json: config checks skipped")
    return subject


def from_gguf(path: str | Path) -> Subject:
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001
        raise BadInput(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None

    def value(key, default=None):
        field = reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception:  # noqa: BLE001
            return default

    arch = value("general.architecture", "") or ""
    tokens = value("tokenizer.ggml.tokens", []) or []
    meta = {
        "architecture": arch, "tokens": tokens, "token_type": value("tokenizer.ggml.token_type", []) or [],
        "bos_token_id": value("tokenizer.ggml.bos_token_id"), "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "eot_token_id": value("tokenizer.ggml.eot_token_id"), "eom_token_id": value("tokenizer.ggml.eom_token_id"),
        "pad_token_id": value("tokenizer.ggml.padding_token_id"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"), "add_eos_token": value("tokenizer.ggml.add_eos_token"),
        "context_length": value(f"{arch}.context_length"), "n_vocab": len(tokens) or None,
    }

    def name(key):
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    tc = {"bos_token": name("bos_token_id"), "eos_token": name("eos_token_id"), "pad_token": name("pad_token_id"),
          "add_bos_token": meta["add_bos_token"]}
    template = value("tokenizer.chat_template")
    config = {"model_type": arch, "max_position_embeddings": meta["context_length"]}
    subject = Subject(name=str(path), kind="gguf", tokenizer_config=tc, config=config,
                      template=template or None, variants={"default": template} if template else {}, gguf=meta)
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if emb is not None and emb.tensor_type.name in ("F32", "F16"):
        import numpy as np
        import torch

        data = torch.from_numpy(np.array(emb.data, dtype=np.float32)).reshape(-1, int(emb.shape[0]))
        subject.weights = weights_mod.TensorWeights(data, None, "the GGUF token_embd tensor")
    else:
        subject.notes.append("token_embd is quantised or absent: embedding checks skipped")
    return subject


def read_resolved_recipe(run_dir: Path):
    """The Recipe saved in a run directory (its `_run` facts removed)."""
    data = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")) or {}
    data.pop("_run", None)
    try:
        return recipe_mod.Recipe.model_validate(data)
    except Exception as err:  # noqa: BLE001
        raise BadInput(f"{run_dir / 'recipe.resolved.yaml'}: not a valid recipe ({str(err).splitlines()[0]})") from None


def from_run_dir(run_dir: Path) -> Subject:
    recipe = read_resolved_recipe(run_dir)
    for sub in ("merged", "model", "adapter"):
        if (run_dir / sub / "tokenizer_config.json").is_file():
            folder = run_dir / sub
            break
    else:
        raise BadInput(f"{run_dir}: no merged/, model/ or adapter/ with a tokenizer yet (did the run finish?)")
    base = Path(pretrained.resolve_name(recipe.model.name))
    weights_folder = folder if weights_mod.from_folder(folder) is not None else (base if base.is_dir() else None)
    subject = from_folder(folder, recipe=recipe, kind="run", weights_folder=weights_folder)
    if subject.config is None and base.is_dir():
        subject.config = read_json(base / "config.json")
        subject.generation_config = subject.generation_config or read_json(base / "generation_config.json")
    return subject


def from_recipe(path: Path, overrides=(), sample_rows: int = 8) -> Subject:
    recipe = recipe_mod.load(path, list(overrides))
    model, tokenizer = pretrained.load(recipe.model)
    template = templates.resolve(recipe.template.name, tokenizer)  # ChatTemplateError is a BadInput (exit 2)
    samples = []
    try:
        section = recipe.dataset.model_copy(update={"max_samples": sample_rows, "skip_invalid": True})
        samples, _, _ = formats.read_rows(section)
    except Exception as err:  # noqa: BLE001 - the data is optional for the doctor
        notes = [f"dataset rows could not be read ({err}): data checks skipped"]
    else:
        notes = []
    subject = from_objects(model, tokenizer, template, recipe, kind="recipe", samples=samples)
    subject.notes += notes
    folder = Path(pretrained.resolve_name(recipe.model.name))
    if folder.is_dir():
        subject.folder = folder  # --fix writes corrected copies of this folder's files
    return subject


def resolve_target(target: str, overrides=()) -> Subject:
    """Any TARGET of `ftcli doctor` -> Subject; BadInput when it cannot be read."""
    path = Path(target).expanduser()
    if target.endswith((".yaml", ".yml")) and path.is_file():
        return from_recipe(path, overrides)
    if path.is_file() and (target.endswith(".gguf") or _is_gguf(path)):
        return from_gguf(path)
    if path.is_dir() and (path / "recipe.resolved.yaml").is_file():
        return from_run_dir(path)
    if builtin.is_builtin(target):
        return from_folder(pretrained.resolve_name(target))
    if path.is_dir():
        if not any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "config.json",
                                                   "tokenizer.model")):
            raise BadInput(f"{path}: no tokenizer or config files here (expected tokenizer_config.json, "
                           "tokenizer.json or config.json)")
        return from_folder(path)
    if path.exists():
        raise BadInput(f"{target}: not a recipe (.yaml), a model folder, a run directory or a GGUF file")
    if target.count("/") == 1 and not target.startswith((".", "/")):
        return from_folder(_download(target))
    raise BadInput(f"{target}: no such file or folder")


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _download(repo_id: str) -> Path:
    cached = offline.local_or_fail(repo_id, what="doctor")
    if cached is not None:
        return Path(cached)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001
        raise BadInput(f"{repo_id}: could not fetch the model's tokenizer and config files "
                       f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                       hint="check the id and the network, or pass a local folder") from None

