"""Defensive readers of what model files hold, one source at a time: special-token values, chat
templates, id lists, the vocabulary and added tokens of tokenizer.json, tokenizer_config.json,
added_tokens.json, GGUF metadata or a live tokenizer, and tokenizer.json's post-processor.
`Subject` (subject.py) picks the best source for each fact; nothing here judges anything.

Real files hold AddedToken dicts, templates as lists of named templates, null bos tokens and 1e30
lengths, so every reader accepts any shape and returns an empty value for what it cannot read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json",
                   "generation_config.json", "config.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model")


def token_str(value: Any) -> str | None:
    """A special-token value as a string: str, AddedToken, {"content": ...} dict, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) and content else None
    content = getattr(value, "content", None)
    return content if isinstance(content, str) else str(value)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def template_variants(value: Any) -> dict[str, str]:
    """chat_template as str, list of {"name", "template"} or dict name -> text -> {name: text}."""
    if isinstance(value, str):
        return {"default": value} if value else {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items() if isinstance(v, str) and v}
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                out[str(item.get("name") or f"template_{i}")] = item["template"]
        return out
    return {}


def pick_template(variants: dict[str, str]) -> str | None:
    if not variants:
        return None
    return variants.get("default") or next(iter(variants.values()))


def id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)]
    return []


def json_vocab(tokenizer_json: dict | None) -> dict[str, int]:
    """The vocabulary of tokenizer.json's model (its added tokens not included)."""
    raw = ((tokenizer_json or {}).get("model") or {}).get("vocab")
    if isinstance(raw, dict):
        return {k: int(v) for k, v in raw.items()}
    if isinstance(raw, list):  # Unigram: [[piece, score], ...]
        return {item[0]: i for i, item in enumerate(raw) if isinstance(item, (list, tuple)) and item}
    return {}


def gguf_added(gguf: dict) -> list[dict]:
    """The added tokens of GGUF metadata, as [{"id", "content", "special"}]: its CONTROL and USER_DEFINED tokens."""
    types = gguf.get("token_type") or []
    out = []
    for i, t in enumerate(gguf.get("tokens") or []):
        kind = types[i] if i < len(types) else 1
        if kind in (3, 4):  # CONTROL, USER_DEFINED
            out.append({"id": i, "content": t, "special": kind == 3})
    return out


def added_tokens(tokenizer, tokenizer_json: dict, tokenizer_config: dict, added_tokens_json: dict | None) -> list[dict]:
    """The added tokens of a Hugging Face tokenizer, as [{"id", "content", "special"}] sorted by id: the live
    tokenizer's when tokenizer.json lists none, else tokenizer.json's, else those of tokenizer_config.json's
    added_tokens_decoder and added_tokens.json."""
    out: dict[int, dict] = {}
    if tokenizer is not None and not tokenizer_json.get("added_tokens"):
        try:
            for i, tok in tokenizer.added_tokens_decoder.items():
                out[int(i)] = {"id": int(i), "content": token_str(tok), "special": bool(getattr(tok, "special", True))}
            return sorted(out.values(), key=lambda e: e["id"])
        except Exception:  # noqa: BLE001
            pass
    for entry in tokenizer_json.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int) and entry.get("content"):
            out[entry["id"]] = {"id": entry["id"], "content": entry["content"], "special": bool(entry.get("special"))}
    if not out:
        for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
            content = token_str(entry)
            if content and str(key).lstrip("-").isdigit():
                special = entry.get("special", True) if isinstance(entry, dict) else True
                out[int(key)] = {"id": int(key), "content": content, "special": bool(special)}
        for content, i in (added_tokens_json or {}).items():
            if isinstance(i, int) and i not in out:
                out[i] = {"id": i, "content": content, "special": True}
    return sorted(out.values(), key=lambda e: e["id"])


def parse_post_processor(pp: Any) -> tuple[list[str], list[str]]:
    """Special tokens a post-processor puts before and after the single sequence."""
    if not isinstance(pp, dict):
        return [], []
    kind = pp.get("type")
    if kind == "Sequence":
        before, after = [], []
        for inner in pp.get("processors") or []:
            b, a = parse_post_processor(inner)
            before += b
            after += a
        return before, after
    if kind == "TemplateProcessing":
        before, after, seen_seq = [], [], False
        for piece in pp.get("single") or []:
            if "Sequence" in piece:
                seen_seq = True
            elif "SpecialToken" in piece:
                name = piece["SpecialToken"].get("id")
                (after if seen_seq else before).append(name)
        return before, after
    if kind in ("BertProcessing", "RobertaProcessing"):
        cls, sep = pp.get("cls") or [None], pp.get("sep") or [None]
        return [cls[0]], [sep[0]]
    return [], []
