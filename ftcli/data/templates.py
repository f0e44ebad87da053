"""Chat-template registry over templates/: resolve a template, render it, build loss masks.

Rendering always goes through `tokenizer.apply_chat_template`, so ftcli and transformers
run the same Jinja engine with the same options and cannot drift apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import yaml

from ftcli.data import render_limits
from ftcli.errors import BadInput

IGNORE_INDEX = -100  # label value the loss skips
ROLES = ("system", "user", "assistant")


class ChatTemplateError(BadInput, ValueError):
    """A template cannot be found or rendered, or the messages are malformed (exit 2)."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # family name, "auto", or the .jinja path
    source: str  # the Jinja text
    end_of_turn: str | None  # token string closing an assistant turn
    stop_tokens: tuple[str, ...]  # every string generation must stop on
    supports_system: bool = True


def _template_dir():
    try:
        return resources.files("ftcli.templates")
    except ModuleNotFoundError:
        # A source checkout used without `pip install -e .`: templates/ sits beside ftcli/.
        return Path(__file__).resolve().parents[1] / "templates"


FAMILIES: tuple[str, ...] = tuple(
    sorted(p.name.removesuffix(".yaml") for p in _template_dir().iterdir() if p.name.endswith(".yaml"))
)


def family_info(name: str) -> dict:
    """The parsed templates/<name>.yaml (a fresh dict each call)."""
    if name not in FAMILIES:
        raise _unknown_family(name)
    return yaml.safe_load(_template_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def load_family(name: str) -> ChatTemplate:
    info = family_info(name)
    source = _template_dir().joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(
        name=name,
        source=source,
        end_of_turn=info["end_of_turn"],
        stop_tokens=tuple(info["stop_tokens"]),
        supports_system=bool(info.get("supports_system", True)),
    )


def _unknown_family(name: str) -> ChatTemplateError:
    return ChatTemplateError(
        f"unknown chat template family {name!r}; known families: {', '.join(FAMILIES)}. "
        "Use 'auto' to take the tokenizer's own template, or a path to a .jinja file."
    )


def resolve(spec: str, tokenizer) -> ChatTemplate:
    """`spec` is a family name, "auto" (the tokenizer's chat_template) or a path to a .jinja file."""
    spec = str(spec)
    if spec in FAMILIES:
        return load_family(spec)
    if spec == "auto":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates (e.g. Hermes "tool_use")
            source = source.get("default")
        if not source:
            raise ChatTemplateError(
                "template 'auto' needs a tokenizer with a chat_template, and this one has none "
                "(base models usually don't). Set template.name to a family "
                f"({', '.join(FAMILIES)}) or to a path to a .jinja file."
            )
        return _from_text("auto", source, tokenizer)
    check_name(spec)  # an unknown family or a missing file
    path = Path(spec).expanduser()
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ChatTemplateError(f"chat template file {path} cannot be read as UTF-8 text: {err}") from None
    sidecar = path.with_suffix(".yaml")  # optional: end_of_turn / stop_tokens for a custom template
    info = yaml.safe_load(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None
    return _from_text(spec, source, tokenizer, info)


def check_name(spec: str) -> None:
    """What `resolve` refuses before any tokenizer exists: an unknown family or a missing .jinja file
    (so that `ftcli validate` and the start of `ftcli train` say it, not a step after the model has loaded)."""
    spec = str(spec)
    if spec in FAMILIES or spec == "auto":
        return
    if spec.endswith(".jinja") or "/" in spec or "\\" in spec:
        if not Path(spec).expanduser().is_file():
            raise ChatTemplateError(f"template.name: chat template file not found: {spec}. Give an existing .jinja "
                                    f"file, a family ({', '.join(FAMILIES)}) or 'auto'.")
        return
    raise ChatTemplateError(f"template.name: {_unknown_family(spec).message}")


def _from_text(name: str, source: str, tokenizer, info: dict | None = None) -> ChatTemplate:
    """A template from text: take end_of_turn/stop tokens from `info`, else guess them."""
    eos = getattr(tokenizer, "eos_token", None)
    if info:
        eot = info.get("end_of_turn")
        stops = list(info.get("stop_tokens") or [])
    else:
        # Guess from the families whose end-of-turn token is written in the template text;
        # keep only the stop tokens this tokenizer has (e.g. <|eom_id|> exists from Llama 3.1 on).
        matches = [t for t in map(load_family, FAMILIES) if t.end_of_turn and t.end_of_turn in source]
        eot = matches[0].end_of_turn if matches else eos
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        stops = [s for t in matches for s in t.stop_tokens if not vocab or s in vocab]
    stops = list(dict.fromkeys(s for s in [eot, *stops, eos] if s))
    draft = ChatTemplate(name, source, eot, tuple(stops))
    # Ask the template itself whether it accepts a system message.
    try:
        render(draft, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenizer)
        supports_system = True
    except ChatTemplateError:
        supports_system = False
    return ChatTemplate(name, source, eot, tuple(stops), supports_system)


def _validate(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError(f"messages must be a non-empty list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise ChatTemplateError(f"message {i}: role {m.get('role')!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ChatTemplateError(
                f"message {i} ({m['role']}): 'content' must be a string, got {type(m.get('content')).__name__}"
            )


def render(template: ChatTemplate, messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
    _validate(messages)
    # Datasets (Arrow) fill keys missing from a row with None, and templates test keys with
    # `in message` (Llama 3.1: 'tool_calls'); recent transformers drop them too, older may not.
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    # The size limit grows with the conversation: a template copies the messages, plus its own markup.
    max_chars = render_limits.MAX_CHARS + 2 * sum(len(m["content"]) for m in messages)
    try:
        with render_limits.limited(template.source), render_limits.capped_stream(_compiled(template.source), max_chars):
            text = tokenizer.apply_chat_template(
                messages,
                chat_template=template.source,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        return render_limits.check_size(text, max_chars)
    except render_limits.LimitExceeded as e:
        raise ChatTemplateError(f"chat template {template.name!r} was stopped: {e}") from None
    except (jinja2.TemplateError, TypeError, ValueError) as e:
        hint = ""
        if not template.supports_system and any(m["role"] == "system" for m in messages):
            hint = " This template has no system role: drop the system message or fold it into the first user message."
        raise ChatTemplateError(f"chat template {template.name!r} failed to render: {e}.{hint}") from e


def _compiled(source: str):
    """The Jinja template transformers renders `source` with (its cached compile), so that the output size can be
    capped while it streams; None where a transformers version keeps it elsewhere (the size is then checked after
    rendering, and the time limit still holds)."""
    try:
        from transformers.utils import chat_template_utils

        return chat_template_utils._compile_jinja_template(source)
    except Exception:  # noqa: BLE001 - a missing helper or a template that does not compile: rendering will say
        return None


def adds_bos(tokenizer) -> bool:
    """Whether encoding with special tokens puts bos_token_id in front."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    if getattr(tokenizer, "add_bos_token", False):
        return True
    # transformers 5 leaves add_bos_token False on plain fast tokenizers whose
    # post-processor adds BOS, so ask the tokenizer what it really does.
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos_id] and without[:1] != [bos_id]


def _needs_bos(text: str, tokenizer) -> bool:
    """Add the BOS the tokenizer would add on encode, unless the template already printed it."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and not text.startswith(bos) and adds_bos(tokenizer)


def prompt_ids(template: ChatTemplate, messages: list[dict], tokenizer) -> list[int]:
    """Token ids of the generation prompt for `messages`, with BOS handled exactly as in encode()."""
    text = render(template, messages, tokenizer, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [tokenizer.bos_token_id, *ids] if _needs_bos(text, tokenizer) else ids


def _assistant_spans(template: ChatTemplate, messages: list[dict], tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in `text`, each including its end-of-turn token.

    The start of turn i is the length of the rendering of messages[:i] with the generation
    prompt: this works for templates that render the last turn differently (Qwen3's
    <think> block) because it never has to recognise a header in the text.
    """
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise ChatTemplateError("message 0 is an assistant turn: a conversation must start with system or user")
        prefix = render(template, messages[:i], tokenizer, add_generation_prompt=True)
        if not text.startswith(prefix):
            raise ChatTemplateError(
                f"template {template.name!r} is not prefix-stable at turn {i}: rendering messages[:{i}] with "
                "the generation prompt is not a prefix of the whole conversation, so the assistant turn "
                "cannot be located. Fix the template or use train_on: all."
            )
        start = len(prefix)
        end = text.find(template.end_of_turn, start) if template.end_of_turn else -1
        if end >= 0:
            end += len(template.end_of_turn)
        elif i == len(messages) - 1:
            end = len(text)  # the last turn may simply run to the end of the text
        else:
            # Running to the end of the text here would train on the user turns that follow.
            raise ChatTemplateError(
                f"end-of-turn token {template.end_of_turn!r} not found after assistant turn {i} of "
                f"template {template.name!r}; set end_of_turn in a .yaml beside the .jinja file."
            )
        spans.append((start, end))
    return spans


def encode(
    template: ChatTemplate,
    messages: list[dict],
    tokenizer,
    train_on: str = "assistant",
    max_length: int | None = None,
) -> dict:
    """Tokenize one conversation: {"input_ids", "labels", "truncated"}; untrained labels are -100."""
    if train_on not in ("assistant", "all"):
        raise ChatTemplateError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    if max_length is not None and max_length < 1:
        raise ChatTemplateError(f"max_length must be positive, got {max_length}")
    text = render(template, messages, tokenizer)
    if train_on == "all":
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        labels = list(ids)
    else:
        if not getattr(tokenizer, "is_fast", False):
            raise ChatTemplateError("train_on: assistant needs a fast tokenizer (for offset mappings)")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        spans = _assistant_spans(template, messages, tokenizer, text)
        # A token is trained iff it overlaps an assistant span (as transformers' assistant
        # masks do): SentencePiece-style vocabularies merge a header's "\n" with the first
        # word of the reply ("\nThe"), and that token must still be learned.
        labels = [
            tok if any(s < b and e > a for a, b in spans) else IGNORE_INDEX
            for tok, (s, e) in zip(ids, enc["offset_mapping"])
        ]
    if _needs_bos(text, tokenizer):
        ids.insert(0, tokenizer.bos_token_id)
        labels.insert(0, tokenizer.bos_token_id if train_on == "all" else IGNORE_INDEX)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def stop_token_ids(template, tokenizer) -> list[int]:
    """Every id that ends a reply: the template's stop strings that are single tokens, plus eos."""
    ids = set()
    for text in (*template.stop_tokens, template.end_of_turn, tokenizer.eos_token):
        if not text:
            continue
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)
