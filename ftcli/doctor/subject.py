"""What the doctor examines: one `Subject` holding the files a model ships with (as dicts),
and, where available, the live tokenizer, the model or its weights, the chat template,
the recipe and GGUF metadata. Checks read it; nothing here judges anything.

targets.py builds a Subject from a folder, a GGUF, a recipe, a run or live objects; readers.py reads
each source defensively; the properties here pick the best source for each fact (the live tokenizer,
the GGUF metadata or the files). Any part may be missing: a folder may hold a tokenizer and no weights.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.data import templates
from ftcli.doctor import probes
from ftcli.doctor.readers import (TOKEN_KEYS, added_tokens, gguf_added, id_list, json_vocab, parse_post_processor,
                                  token_str)


@dataclass
class Subject:
    name: str
    kind: str = "folder"  # folder | training | recipe | run | gguf
    folder: Path | None = None
    tokenizer_config: dict = field(default_factory=dict)
    tokenizer_json: dict | None = None
    special_tokens_map: dict = field(default_factory=dict)
    added_tokens_json: dict = field(default_factory=dict)
    generation_config: dict | None = None
    config: dict | None = None
    template: str | None = None
    variants: dict[str, str] = field(default_factory=dict)
    template_file_differs: bool = False
    tokenizer: Any = None  # live transformers tokenizer
    model: Any = None  # live torch model
    weights: Any = None  # ftcli.doctor.weights.Weights
    recipe: Any = None
    chat: Any = None  # ftcli.data.templates.ChatTemplate used for training
    gguf: dict | None = None
    samples: list = field(default_factory=list)  # a few standard rows of the recipe's dataset
    notes: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ special tokens and vocab
    def special(self, key: str) -> str | None:
        if self.tokenizer is not None:
            return token_str(getattr(self.tokenizer, key, None))
        value = token_str(self.tokenizer_config.get(key))
        if value is None and key not in self.tokenizer_config:
            value = token_str(self.special_tokens_map.get(key))
        return value

    @property
    def bos(self) -> str | None:
        return self.special("bos_token")

    @property
    def eos(self) -> str | None:
        return self.special("eos_token")

    @property
    def pad(self) -> str | None:
        return self.special("pad_token")

    @property
    def unk(self) -> str | None:
        return self.special("unk_token")

    def specials(self) -> dict:
        """The variables transformers passes to a template (bos_token, eos_token, ...)."""
        return {k: self.special(k) for k in TOKEN_KEYS}

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        if self.tokenizer is not None:
            try:
                return dict(self.tokenizer.get_vocab())
            except Exception:  # noqa: BLE001
                pass
        if self.gguf is not None:
            return {t: i for i, t in enumerate(self.gguf.get("tokens") or [])}
        vocab = json_vocab(self.tokenizer_json)
        for entry in self.added:
            vocab[entry["content"]] = entry["id"]
        return vocab

    @property
    def vocab_complete(self) -> bool:
        """True when `vocab` is the whole vocabulary, not only the added tokens of a config."""
        return self.tokenizer is not None or self.gguf is not None or bool((self.tokenizer_json or {}).get("model"))

    def token_of(self, i: int) -> str:
        if "inverse" not in self._cache:
            self._cache["inverse"] = {v: k for k, v in self.vocab.items()}
        return self._cache["inverse"].get(i, str(i))

    def id_of(self, token: str | None) -> int | None:
        if not token:
            return None
        return self.vocab.get(token)

    @functools.cached_property
    def added(self) -> list[dict]:
        """Added tokens as [{"id", "content", "special"}], from the best source available."""
        if self.gguf is not None:
            return gguf_added(self.gguf)
        return added_tokens(self.tokenizer, self.tokenizer_json or self.live_tokenizer_json or {},
                            self.tokenizer_config, self.added_tokens_json)

    @property
    def added_strings(self) -> list[str]:
        return [e["content"] for e in self.added]

    def known_markers(self) -> list[str]:
        """Token strings to look for in rendered text: added tokens and the named special tokens."""
        names = [t for t in (self.special(k) for k in TOKEN_KEYS) if t]
        return list(dict.fromkeys(self.added_strings + names))

    # ------------------------------------------------------------------ encoding facts
    @functools.cached_property
    def post_processor_tokens(self) -> tuple[list[str], list[str]] | None:
        """(prepended, appended) special tokens of tokenizer.json's TemplateProcessing; None if unknown."""
        tj = self.tokenizer_json
        if self.tokenizer is not None and tj is None:
            tj = self.live_tokenizer_json
        if not tj or "post_processor" not in tj:
            return None
        return parse_post_processor(tj.get("post_processor"))

    @functools.cached_property
    def live_tokenizer_json(self) -> dict | None:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            return json.loads(backend.to_str())
        except Exception:  # noqa: BLE001
            return None

    @functools.cached_property
    def adds_bos(self) -> bool | None:
        """Whether encoding text with special tokens puts bos in front (None: cannot tell)."""
        bos = self.bos
        if self.gguf is not None:
            flag = self.gguf.get("add_bos_token")
            return bool(flag) if flag is not None else None
        if self.tokenizer is not None:
            bos_id = self.id_of(bos)
            if bos_id is None:
                return False
            try:
                with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
                without = self.tokenizer("a", add_special_tokens=False)["input_ids"]
            except Exception:  # noqa: BLE001
                return None
            return with_special[:1] == [bos_id] and without[:1] != [bos_id]
        if not bos:
            return False
        if self.post_processor_tokens is not None:
            return bos in self.post_processor_tokens[0]
        flag = self.tokenizer_config.get("add_bos_token")
        if flag is not None:
            return bool(flag)
        # No tokenizer.json and no flag: the slow SentencePiece classes default to adding bos.
        return self.tokenizer_config.get("tokenizer_class", "") in ("LlamaTokenizer", "GemmaTokenizer",
                                                                     "LlamaTokenizerFast", "GemmaTokenizerFast")

    @functools.cached_property
    def adds_eos(self) -> bool | None:
        eos = self.eos
        if self.tokenizer is not None:
            eos_id = self.id_of(eos)
            if eos_id is None:
                return False
            try:
                ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            except Exception:  # noqa: BLE001
                return None
            return ids[-1:] == [eos_id]
        if self.post_processor_tokens is not None:
            return bool(eos) and eos in self.post_processor_tokens[1]
        flag = self.tokenizer_config.get("add_eos_token")
        return bool(flag) if flag is not None else False

    # ------------------------------------------------------------------ model facts
    @property
    def text_config(self) -> dict:
        cfg = self.config or {}
        inner = cfg.get("text_config")
        return {**cfg, **inner} if isinstance(inner, dict) else cfg

    @property
    def model_type(self) -> str:
        cfg = self.text_config
        kind = cfg.get("model_type") or (self.gguf or {}).get("architecture") or ""
        if not kind:
            cls = str(self.tokenizer_config.get("tokenizer_class") or "")
            kind = {"GemmaTokenizer": "gemma", "GemmaTokenizerFast": "gemma"}.get(cls, "")
        return str(kind).lower()

    @property
    def family(self) -> str:
        """A coarse family from the model type, else from the template's markers."""
        kind = self.model_type
        for prefix in ("gemma", "llama", "mistral", "ministral", "pixtral", "qwen", "phi3", "phi", "deepseek"):
            if kind.startswith(prefix):
                return {"ministral": "mistral", "pixtral": "mistral"}.get(prefix, prefix)
        text = self.template or ""
        for marker, fam in (("<start_of_turn>", "gemma"), ("<|start_header_id|>", "llama"), ("<|header_start|>", "llama"),
                            ("[INST]", "mistral"), ("<|im_sep|>", "phi"), ("<|assistant|>", "phi3"),
                            ("<｜Assistant｜>", "deepseek"), ("<|im_start|>", "qwen")):
            if marker in text:
                return fam
        return ""

    @property
    def max_positions(self) -> int | None:
        value = self.text_config.get("max_position_embeddings") or (self.gguf or {}).get("context_length")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    def stop_ids(self) -> tuple[set[int], str]:
        """Token ids generation stops on, and where they come from."""
        if self.gguf is not None:
            ids = {self.gguf.get(k) for k in ("eos_token_id", "eot_token_id", "eom_token_id")}
            return {i for i in ids if isinstance(i, int)}, "the GGUF metadata (eos/eot ids)"
        if self.generation_config is not None and "eos_token_id" in self.generation_config:
            return set(id_list(self.generation_config.get("eos_token_id"))), "generation_config.json"
        if self.config is not None and id_list(self.text_config.get("eos_token_id")):
            return set(id_list(self.text_config.get("eos_token_id"))), "config.json (no generation_config.json)"
        eos_id = self.id_of(self.eos)
        return ({eos_id} if eos_id is not None else set()), "the tokenizer's eos (no generation_config.json)"

    @property
    def embedding_rows(self) -> int | None:
        if self.weights is not None and self.weights.n_embed:
            return self.weights.n_embed
        value = self.text_config.get("vocab_size") or (self.gguf or {}).get("n_vocab")
        return int(value) if isinstance(value, int) and value > 0 else None

    @property
    def model_max_length(self) -> float | None:
        if self.tokenizer is not None:
            value = getattr(self.tokenizer, "model_max_length", None)
        else:
            value = self.tokenizer_config.get("model_max_length")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # ------------------------------------------------------------------ rendering
    def render(self, messages: list[dict], agp: bool = False, source: str | None = None, **extra) -> str:
        """Render (cached); raises probes.RenderError."""
        source = source if source is not None else self.template
        if source is None:
            raise probes.RenderError("no chat template")
        key = (source, json.dumps(messages, sort_keys=True), agp, json.dumps(extra, sort_keys=True, default=str))
        if key not in self._cache:
            try:
                self._cache[key] = (probes.render(source, messages, agp, self.specials(), **extra), None)
            except probes.RenderError as err:
                self._cache[key] = (None, err)
        text, err = self._cache[key]
        if err is not None:
            raise err
        return text

    def try_render(self, messages: list[dict], agp: bool = False, source: str | None = None, **extra) -> str | None:
        try:
            return self.render(messages, agp, source, **extra)
        except probes.RenderError:
            return None

    def end_of_turn(self, source: str | None = None) -> str | None:
        """The template's end-of-turn marker: the first marker after the assistant content (§0)."""
        text = self.try_render(probes.UA, False, source)
        if text is None or probes.REPLY not in text:
            return None
        return probes.first_marker_after(text, text.index(probes.REPLY) + len(probes.REPLY), self.known_markers())

    def assistant_gap(self, source: str | None = None) -> str | None:
        """The text between the user's content and the assistant's content in render(UA)."""
        text = self.try_render(probes.UA, False, source)
        if text is None or probes.USER not in text or probes.REPLY not in text:
            return None
        start = text.index(probes.USER) + len(probes.USER)
        end = text.index(probes.REPLY)
        return text[start:end] if end >= start else None

    # ------------------------------------------------------------------ live-only helpers
    def chat_template(self):
        """The ftcli ChatTemplate for encode(): the training one, or one built from the files."""
        if self.chat is not None:
            return self.chat
        if self.template is None:
            return None
        eot = self.end_of_turn()
        stops = tuple(t for t in (eot, self.eos) if t)
        supports_system = self.try_render(probes.SUA) is not None
        return templates.ChatTemplate("auto", self.template, eot, stops, supports_system)

    def encode_ids(self, text: str, special: bool = False) -> list[int] | None:
        if self.tokenizer is None:
            return None
        try:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        except Exception:  # noqa: BLE001
            return None

