"""Tokenizer metadata for GGUF, read from a Hugging Face tokenizer folder.

Two vocabulary kinds exist in llama.cpp, and every family we export is one of them:

* ``gpt2``: byte-level BPE (Llama 3, Qwen, Phi-4). Tokens are the byte-level strings of
  ``tokenizer.json``, merges are required, and the pre-tokenizer is named by the split
  regex it uses (llama.cpp hard-codes one regex per name).
* ``llama``: SentencePiece-style BPE with byte fallback (Mistral, Gemma, Phi-3). llama.cpp
  merges the adjacent pair whose *result* has the highest score, so scores are derived
  from the merge ranks of ``tokenizer.json`` (earlier merge = higher score).

Everything is read from ``tokenizer.json`` (what Hugging Face actually tokenizes with)
plus the loaded tokenizer for the special ids; nothing is guessed from the model's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ftcli.errors import BadInput

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of byte-level BPE tokenizers -> llama.cpp pre-tokenizer names. llama.cpp
# implements each name with its own copy of the regex, so a regex we do not know cannot be
# exported faithfully. The Llama 3 regex is also tiktoken's cl100k one (Phi-4 uses it
# without ignore_merges: llama.cpp calls that "dbrx").
_CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Mistral-Nemo's "Tekken" (tiktoken-style, case-aware letters, single digits): llama.cpp's `tekken`.
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_BPE_PRE = {"llama-bpe (Llama 3.x)": _CL100K, "dbrx (cl100k, Phi-4)": _CL100K, "qwen2 (Qwen2/2.5/3)": _QWEN2,
                 "tekken (Mistral-Nemo)": _TEKKEN}

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class Vocab:
    model: str                       # "gpt2" or "llama"
    pre: str                         # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)   # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    padded: int = 0                  # [PAD{i}] entries added to reach the embedding rows
    rstrip_special: bool = False     # HF special tokens swallow the whitespace after them (Phi-3)

    def write(self, writer, chat_template: str | None) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                   "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id}
        for key, token_id in self.special_ids.items():
            setters[key](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if chat_template:
            writer.add_chat_template(chat_template)


def _pre_tokenizer_parts(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return list(pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]


def _bpe_pre_name(data: dict) -> str:
    """llama.cpp's name for the byte-level pre-tokenizer described in tokenizer.json."""
    parts = _pre_tokenizer_parts(data.get("pre_tokenizer"))
    regexes = [p["pattern"].get("Regex") for p in parts if p.get("type") == "Split" and "Regex" in p.get("pattern", {})]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if not regexes and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(regexes) == 1:
        if regexes[0] == _CL100K:
            return "llama-bpe" if data["model"].get("ignore_merges") else "dbrx"
        if regexes[0] == _QWEN2:
            return "qwen2"
        if regexes[0] == _TEKKEN:
            return "tekken"
    raise BadInput(
        "the tokenizer's BPE pre-tokenizer is not one llama.cpp implements "
        f"(split regex {regexes[0] if regexes else None!r}), so a GGUF would tokenize differently",
        hint="supported byte-level BPE pre-tokenizers: " + ", ".join(KNOWN_BPE_PRE) + ", gpt-2")


def _merge_strings(merges: list) -> list[str]:
    """Merges as "a b" strings (tokenizers >= 0.20 saves them as [a, b] pairs)."""
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        else:
            a, b = m
            if " " in a or " " in b:  # cannot happen for byte-level vocabularies
                raise BadInput(f"merge {m!r} contains a space and cannot be written as a GGUF merge")
            out.append(f"{a} {b}")
    return out


def adds_special(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether encoding with special tokens puts `token_id` at the start (or end) of the ids."""
    if token_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if first:
        return with_special[:1] == [token_id] and without[:1] != [token_id]
    return with_special[-1:] == [token_id] and without[-1:] != [token_id]


def read_vocab(model_dir: Path, n_rows: int, end_of_turn: str | None = None) -> Vocab:
    """The GGUF vocabulary of `model_dir`, with exactly `n_rows` entries (the embedding rows)."""
    from transformers import AutoTokenizer

    data = _tokenizer_json(model_dir)
    model = data["model"]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    by_id, added = _tokens_by_id(data, n_rows)
    spm = bool(model.get("byte_fallback"))
    merges = _merge_strings(model.get("merges") or [])
    tokens, types = _token_list(by_id, added, n_rows, spm, model.get("unk_token"))
    special_ids = _special_ids(tokenizer, end_of_turn)
    vocab = Vocab(model="llama" if spm else "gpt2", pre="default" if spm else _bpe_pre_name(data),
                  tokens=tokens, types=types, special_ids=special_ids,
                  add_bos=adds_special(tokenizer, special_ids.get("bos"), first=True),
                  add_eos=adds_special(tokenizer, special_ids.get("eos"), first=False),
                  padded=sum(1 for i in range(n_rows) if i not in by_id),
                  rstrip_special=any(a.get("special") and a.get("rstrip") for a in added.values()))
    if spm:
        vocab.scores = _spm_scores(merges, tokens, types)
        vocab.add_space_prefix = _spm_adds_space_prefix(data)
    else:
        vocab.merges = merges
    return vocab


def _tokenizer_json(model_dir: Path) -> dict:
    """tokenizer.json of `model_dir`, refused unless its model is BPE."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise BadInput(f"{model_dir} has no tokenizer.json; GGUF export reads the fast tokenizer",
                       hint="save the tokenizer with a recent transformers (tokenizer.save_pretrained)")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise BadInput(f"tokenizer model type {model.get('type')!r} is not supported for GGUF export (BPE only)")
    return data


def _tokens_by_id(data: dict, n_rows: int) -> tuple[dict[int, str], dict[int, dict]]:
    """Token text by id (vocabulary and added tokens), and the added tokens by id."""
    by_id: dict[int, str] = {i: t for t, i in data["model"]["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= n_rows:
        raise BadInput(f"the tokenizer has token id {max(by_id)} but the embedding has only {n_rows} rows",
                       hint="resize the token embeddings after adding tokens (model.resize_token_embeddings)")
    return by_id, added


def _token_list(by_id: dict[int, str], added: dict[int, dict], n_rows: int, spm: bool,
                unk: str | None) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for rows 0..n_rows-1 ([PAD<i>] where no token exists)."""
    tokens, types = [], []
    for i in range(n_rows):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(text)
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif text == unk:
            tokens.append(text)
            types.append(UNKNOWN)
        elif spm and _BYTE_PIECE.match(text):
            tokens.append(text)
            types.append(BYTE)
        else:
            tokens.append(text)
            types.append(NORMAL)
    if len(set(tokens)) != len(tokens):
        dupes = sorted({t for t in tokens if tokens.count(t) > 1})[:5]
        raise BadInput(f"the vocabulary has duplicate token strings {dupes}; llama.cpp needs unique tokens")
    return tokens, types


def _special_ids(tokenizer, end_of_turn: str | None) -> dict[str, int]:
    """bos, eos, unk, pad (where the tokenizer has them) and eot (the template's end-of-turn token)."""
    special_ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if isinstance(token_id, int):
            special_ids[key] = token_id
    if end_of_turn:
        eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(eot_id, int) and eot_id != tokenizer.unk_token_id:
            special_ids["eot"] = eot_id
    return special_ids


def _spm_scores(merges: list[str], tokens: list[str], types: list[int]) -> list[float]:
    """Scores from merge ranks: llama.cpp's SentencePiece merge picks the pair whose result scores highest."""
    rank = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), r)
    return [-float(rank[t]) if t in rank and types[i] == NORMAL else (-1000.0 if types[i] in
            (CONTROL, USER_DEFINED, UNUSED) else 0.0) for i, t in enumerate(tokens)]


def _spm_adds_space_prefix(data: dict) -> bool:
    """llama.cpp's add_space_prefix for the behaviour tokenizer.json describes.

    llama.cpp prepends "▁" to every text fragment that follows a special token (and to the
    start). Hugging Face does the same with a Prepend("▁") normalizer or a Metaspace with
    prepend_scheme "always" (legacy SentencePiece), but with prepend_scheme "first"
    (legacy=False) it prepends only at the very start of the text. For that case we turn
    the prefix off: chat prompts, which start with a special token, then tokenize exactly
    alike; only a plain text that starts with a word differs (one "▁").
    """
    for part in _pre_tokenizer_parts(data.get("pre_tokenizer")):
        if part.get("type") == "Metaspace":
            return part.get("prepend_scheme", "always") == "always" and part.get("add_prefix_space", True)
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    return any(s.get("type") == "Prepend" for s in steps)
