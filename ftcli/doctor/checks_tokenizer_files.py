"""Tokenizer file checks: post-processor, tokenizer files that disagree, special tokens, vocabulary size,
legacy and pre-tokenizer regexes (research/doctor-bugs.md section A, T08-T15)."""

from __future__ import annotations

import difflib

from ftcli.doctor import probes
from ftcli.doctor.checks_tokens import NOT_SPECIAL_BY_DESIGN, WELL_KNOWN_CONTROL, stop_and_turn_tokens, template_tokens
from ftcli.doctor.readers import token_str
from ftcli.doctor.registry import Hit, check
from ftcli.doctor.subject import Subject

# Mistral's corrected pre-tokenizer split pattern (transformers PR#42131 / fix_mistral_regex).
MISTRAL_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                 r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
MISTRAL_TYPES = ("mistral", "mistral3", "ministral", "pixtral", "voxtral")


@check("post-processor-mismatch", "warning", "T08",
       "make add_bos_token/add_eos_token agree with tokenizer.json's post-processor (--fix sets the flags)",
       fixable=True, needs=("files",))
def post_processor_mismatch(s: Subject):
    tj = s.tokenizer_json
    if not tj or s.folder is None or not isinstance(tj.get("post_processor"), dict):
        return None
    before, after = s.post_processor_tokens or ([], [])
    hits = []
    for flag, token, side in (("add_bos_token", s.bos, before), ("add_eos_token", s.eos, after)):
        value = s.tokenizer_config.get(flag)
        if value is None or not token:
            continue
        does = token in side
        if bool(value) != does:
            hits.append(Hit(f"tokenizer_config says {flag}: {str(bool(value)).lower()} but tokenizer.json's post-processor "
                            f"{'adds' if does else 'does not add'} {token!r}: tools disagree on whether it is added",
                            data={flag: does}))
    return hits


@check("post-processor-stale", "error", "T09", "rebuild the post-processor's special-token ids from the vocabulary "
       "(--fix does)", fixable=True, needs=("tokens",))
def post_processor_stale(s: Subject):
    tj = s.tokenizer_json if s.tokenizer_json is not None else s.live_tokenizer_json
    if not tj or not s.vocab_complete:
        return None
    rows = s.embedding_rows
    hits = []
    for pp in template_processors(tj.get("post_processor")):
        for name, spec in (pp.get("special_tokens") or {}).items():
            for token, i in zip(spec.get("tokens") or [], spec.get("ids") or []):
                real = s.id_of(token)
                if real != i or (rows is not None and i >= rows):
                    why = (f"is {real} in the vocabulary" if real is not None and real != i
                           else "is not in the vocabulary" if real is None else f"is past the {rows} embedding rows")
                    hits.append(Hit(f"the post-processor adds {token!r} as id {i}, but {token!r} {why}",
                                    fixable=real is not None and (rows is None or real < rows)))
    return hits


def template_processors(pp) -> list[dict]:
    if not isinstance(pp, dict):
        return []
    if pp.get("type") == "Sequence":
        return [x for inner in pp.get("processors") or [] for x in template_processors(inner)]
    return [pp] if pp.get("type") == "TemplateProcessing" else []


@check("tokenizer-files-disagree", "error", "T10",
       "regenerate tokenizer_config.json's added_tokens_decoder from tokenizer.json (--fix does)", fixable=True,
       needs=("files",))
def tokenizer_files_disagree(s: Subject):
    tj, decoder = s.tokenizer_json, s.tokenizer_config.get("added_tokens_decoder")
    if not tj or not isinstance(decoder, dict) or s.folder is None:
        return None
    in_json = {e["id"]: e["content"] for e in tj.get("added_tokens") or [] if isinstance(e, dict) and "id" in e}
    bad = []
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if str(key).isdigit() and int(key) in in_json and content != in_json[int(key)]:
            bad.append(f"id {key}: {content!r} in tokenizer_config.json vs {in_json[int(key)]!r} in tokenizer.json")
    if not bad:
        return None
    return Hit(f"{len(bad)} added token(s) differ between the files ({'; '.join(bad[:3])}): slow and fast tokenizers "
               "give different ids")


@check("special-token-missing", "error", "T10", "set bos/eos/pad/unk to strings that are single tokens of the vocabulary")
def special_token_missing(s: Subject):
    if not s.vocab_complete and not s.added:
        return None
    rows = s.embedding_rows
    hits = []
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        token = s.special(key)
        if not token:
            continue
        i = s.id_of(token)
        if i is None:
            close = difflib.get_close_matches(token, s.added_strings, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            hits.append(f"{key} {token!r} is not a token of the vocabulary{hint}: it encodes to several pieces")
        elif s.tokenizer is not None and rows is not None and i >= rows:
            hits.append(f"{key} {token!r} was added as a new id {i}, past the {rows} embedding rows")
    return hits


@check("vocab-size-mismatch", "error", "T11, N12",
       "resize the embeddings upward to cover every token id (never shrink them), or drop the stray tokens")
def vocab_size_mismatch(s: Subject):
    rows = s.embedding_rows
    if rows is None:
        return None
    hits = []
    ids = s.vocab if s.vocab_complete else {e["content"]: e["id"] for e in s.added}
    if ids:
        token, top = max(ids.items(), key=lambda kv: kv[1])
        if top >= rows:
            hits.append(f"token {token!r} has id {top} but the model has {rows} embedding rows: index error, or "
                        "silent out-of-bounds reads in fused kernels")
    cfg_vocab = s.text_config.get("vocab_size")
    w = s.weights
    if w is not None and isinstance(cfg_vocab, int) and cfg_vocab != w.n_embed:
        hits.append(f"config.json says vocab_size {cfg_vocab} but the embedding matrix has {w.n_embed} rows")
    if w is not None and not w.tied and w.n_head and w.n_head != w.n_embed:
        hits.append(f"lm_head has {w.n_head} rows but the embedding has {w.n_embed}")
    return hits


def _looks_control(token: str) -> bool:
    return bool(probes.MARKER_RE.fullmatch(token))


@check("special-token-not-special", "error", "T12",
       "mark the control tokens special: true in tokenizer.json and tokenizer_config.json (--fix does)",
       fixable=True, needs=("tokens",))
def special_token_not_special(s: Subject):
    plain = {e["content"]: e for e in s.added if not e["special"]}
    if not plain:
        return None
    used = stop_and_turn_tokens(s) | {t for t in (s.bos, s.pad, s.unk) if t}
    used |= {t for t in template_tokens(s) if _looks_control(t)}
    hits = []
    for token in sorted(used):
        if token in plain and token not in NOT_SPECIAL_BY_DESIGN:
            hits.append(Hit(f"{token!r} (id {plain[token]['id']}) is a control token the template or config uses but "
                            "is special: false: it survives skip_special_tokens and can be split or normalised",
                            data={"tokens": [token]}))
    declared = s.tokenizer_config.get("additional_special_tokens") or []
    declared = {token_str(t) for t in declared} if isinstance(declared, list) else set()
    # A well-known control name counts only in a control slot (SentencePiece ids 0-7) or when declared
    # special elsewhere: Gemma's vocabulary has HTML tags such as <s> as ordinary tokens.
    rest = sorted(t for t in plain if t in WELL_KNOWN_CONTROL and t not in used
                  and (plain[t]["id"] < 8 or t in declared))
    if rest:
        hits.append(Hit(f"{', '.join(repr(t) for t in rest)} {'is a' if len(rest) == 1 else 'are'} control token"
                        f"{'' if len(rest) == 1 else 's'} with special: false", severity="warning",
                        data={"tokens": rest}))
    return hits


@check("template-unknown-special", "error", "T12, C15",
       "correct the marker in the template (a typo?) or add it as a special token and train its embedding",
       needs=("template", "tokens"))
def template_unknown_special(s: Subject):
    if s.template is None or (not s.vocab_complete and not s.added):
        return None
    known = set(s.vocab)
    rendered = set()
    for conv, agp in ((probes.U, True), (probes.UA, False), (probes.SUA, False), (probes.UAUA, False)):
        text = s.try_render(conv, agp)
        if text:
            rendered.update(m for _, m in probes.markers(text, s.known_markers()))
    literal = {m.group(0) for lit in probes.template_literals(s.template) for m in probes.MARKER_RE.finditer(lit)}
    hits = []
    for marker in sorted(rendered | literal):
        if marker in known:
            continue
        close = difflib.get_close_matches(marker, [t for t in known if _looks_control(t)], n=1, cutoff=0.8)
        angle_word = marker.startswith("<") and not marker.startswith(("<|", "<｜"))
        if angle_word and not close:
            continue  # <tools>, <br>: plain text in prompts, not meant as tokens (a near-miss is a typo)
        if marker.startswith("[") and not close and marker not in rendered:
            continue
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        hits.append(f"the template writes {marker!r}, which is not a token of the vocabulary{hint}: it is split "
                    "into pieces and the model never sees the marker it was trained on")
    return hits


@check("legacy-tokenizer", "warning", "T13",
       "load with legacy=False (from_slow=True) and use one tokenizer for training and export")
def legacy_tokenizer(s: Subject):
    tj = s.tokenizer_json
    flag = s.tokenizer_config.get("legacy")
    cls = str(s.tokenizer_config.get("tokenizer_class") or "")
    if tj:
        if not _legacy_structure(tj):
            return None
        msg = ("tokenizer.json prepends '▁' to the text after every special token (legacy SentencePiece "
               "behaviour): '<s>uns' -> ['<s>', '▁uns']")
        if flag is False:
            msg += ("; tokenizer_config says legacy: false, so transformers rebuilds a non-legacy tokenizer while "
                    "tools that read tokenizer.json directly keep the legacy one: training and serving tokenize differently")
        return msg
    if cls.startswith("LlamaTokenizer") and flag in (True, None) and s.folder is not None \
            and (s.folder / "tokenizer.model").is_file():
        return ("LlamaTokenizer with legacy " + ("true" if flag else "unset (true)") +
                ": text after special tokens gets a '▁' prefix, and slow and fast tokenizers disagree")
    return None


def _legacy_structure(tj: dict) -> bool:
    def walk(node):
        if isinstance(node, dict):
            yield node
            for key in ("normalizers", "pretokenizers"):
                for inner in node.get(key) or []:
                    yield from walk(inner)

    for node in walk(tj.get("normalizer")):
        if node.get("type") == "Prepend" and node.get("prepend") == "▁":
            return True
    for node in walk(tj.get("pre_tokenizer")):
        if node.get("type") == "Metaspace" and (node.get("prepend_scheme") == "always"
                                                or (node.get("add_prefix_space") and "prepend_scheme" not in node)):
            return True
    return False


def split_regexes(tj: dict | None) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"]:
                out.append(node["pattern"]["Regex"])
            for inner in node.get("pretokenizers") or []:
                walk(inner)

    walk((tj or {}).get("pre_tokenizer"))
    return out


@check("mistral-regex", "error", "T14", "replace the pre-tokenizer regex with Mistral's corrected pattern "
       "(--fix does; or load with fix_mistral_regex=True)", fixable=True, needs=("tokens",))
def mistral_regex(s: Subject):
    if s.model_type not in MISTRAL_TYPES:
        return None
    tj = s.tokenizer_json if s.tokenizer_json is not None else s.live_tokenizer_json
    patterns = split_regexes(tj)
    if not patterns or patterns[0] == MISTRAL_REGEX:
        return None
    return ("the pre-tokenizer's split regex is not Mistral's pattern: token boundaries differ from mistral_common "
            "around case changes and digits ('eBay', 'NaOH', 'pH')")


@check("add-bos-without-bos", "warning", "T15", "set add_bos_token false for families without bos (Qwen)",
       fixable=True)
def add_bos_without_bos(s: Subject):
    if s.gguf is not None:
        if s.gguf.get("add_bos_token") and (s.family == "qwen" or s.gguf.get("bos_token_id") is None):
            return ("tokenizer.ggml.add_bos_token is true on a family without bos: every request starts with an "
                    "arbitrary token")
        return None
    if s.tokenizer_config.get("add_bos_token") is True and not s.bos:
        return "add_bos_token is true but there is no bos_token"
    return None


