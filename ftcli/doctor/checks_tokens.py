"""Tokenizer special-token checks (research/doctor-bugs.md section A, T01-T15)."""

from __future__ import annotations

import difflib

from ftcli.doctor import probes
from ftcli.doctor.registry import Hit, check
from ftcli.doctor.subject import Subject, id_list, token_str

# unsloth-zoo pad_token.py's order: reuse a token the family reserves for padding, never add one.
PAD_EXACT = ("<|finetune_right_pad_id|>", "<|finetune_right_pad|>", "<pad>", "[PAD]", "<PAD>", "<|pad|>",
             "<fim_pad>", "<｜▁pad▁｜>", "<|endoftext|>")
PAD_PREFIXES = ("<|reserved_special_token_", "<|placeholder", "<|dummy_", "[control_", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>")
# Added tokens that are meant to be special=false (they are kept when decoding).
NOT_SPECIAL_BY_DESIGN = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}
# Control tokens of the common families: an added token with one of these names must be special.
WELL_KNOWN_CONTROL = {"<s>", "</s>", "<unk>", "<pad>", "<bos>", "<eos>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                      "<start_of_turn>", "<end_of_turn>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                      "<|eom_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|end|>", "<|user|>",
                      "<|assistant|>", "<|system|>", "[INST]", "[/INST]", "<|im_sep|>"}
# Mistral's corrected pre-tokenizer split pattern (transformers PR#42131 / fix_mistral_regex).
MISTRAL_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                 r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
MISTRAL_TYPES = ("mistral", "mistral3", "ministral", "pixtral", "voxtral")


def template_tokens(s: Subject) -> set[str]:
    """Token strings the template prints in the basic probes (system, user, assistant, prompt)."""
    out: set[str] = set()
    known = s.known_markers()
    for conv, agp in ((probes.UA, False), (probes.SUA, False), (probes.U, True)):
        text = s.try_render(conv, agp)
        if text:
            out.update(m for _, m in probes.markers(text, known) if m in s.vocab)
    return out


def stop_and_turn_tokens(s: Subject) -> set[str]:
    out = {s.end_of_turn(), s.eos}
    return {t for t in out if t}


def pad_candidate(s: Subject) -> str | None:
    """An unused token already in the vocabulary to pad with: not eos, bos, a stop token or a template token."""
    # A pad that is one of several stop ids is fine (Qwen pads with <|endoftext|>); eos itself is not.
    avoid = {s.eos, s.bos, s.end_of_turn()} | template_tokens(s)
    avoid_ids = {s.id_of(t) for t in avoid} - {None}
    rows = s.embedding_rows

    def ok(token: str) -> bool:
        i = s.id_of(token)
        return (i is not None and token not in avoid and i not in avoid_ids
                and (rows is None or i < rows))

    declared = s.text_config.get("pad_token_id")
    if isinstance(declared, int):  # reuse the config's declared pad id first
        names = [t for t, i in s.vocab.items() if i == declared]
        if names and ok(names[0]):
            return names[0]
    for token in PAD_EXACT:
        if token in s.vocab and ok(token):
            return token
    for prefix in PAD_PREFIXES:
        for entry in sorted(s.added, key=lambda e: e["id"]):
            if entry["content"].startswith(prefix) and ok(entry["content"]):
                return entry["content"]
    if s.unk and ok(s.unk):
        return s.unk
    return None


def _hf_only(s: Subject) -> bool:
    return s.gguf is None


@check("pad-missing", "error", "T01", "set pad_token to an unused token already in the vocabulary (--fix picks one)",
       fixable=True, needs=("tokens",))
def pad_missing(s: Subject):
    if not _hf_only(s) or s.pad is not None:
        return None
    candidate = pad_candidate(s)
    how = f"--fix uses {candidate!r}" if candidate else "no unused reserved token was found to pad with"
    return Hit("no pad token: batching needs one, and the usual workaround pad = eos masks every eos so "
               f"the model never learns to stop (T02); {how}", fixable=candidate is not None, data={"pad": candidate})


@check("pad-is-eos", "error", "T02", "pad with a distinct reserved token, never with eos (--fix picks one)",
       fixable=True, needs=("tokens",))
def pad_is_eos(s: Subject):
    if not _hf_only(s):
        return None
    eos, pad = s.eos, s.pad
    eos_id = s.id_of(eos)
    cfg_eos = id_list(s.text_config.get("eos_token_id"))
    if eos_id is None and len(cfg_eos) == 1:
        eos_id = cfg_eos[0]
    where = []
    if pad and eos and pad == eos:
        where.append(f"the tokenizer's pad_token is its eos_token {eos!r}")
    for name, cfg in (("config.json", s.text_config if s.config else None), ("generation_config.json", s.generation_config)):
        if not cfg:
            continue
        pad_id = cfg.get("pad_token_id")
        eos_ids = id_list(cfg.get("eos_token_id"))
        if isinstance(pad_id, int) and not isinstance(pad_id, bool) and (
                pad_id == eos_id or (len(eos_ids) == 1 and pad_id == eos_ids[0])):
            where.append(f"{name} has pad_token_id = eos id {pad_id}")
    if not where:
        return None
    candidate = pad_candidate(s)
    return Hit("; ".join(where) + ". Collators that mask pad positions then mask every eos and the model never "
               "learns to stop (endless generation after SFT)"
               + (f"; --fix pads with {candidate!r}" if candidate else "; no unused reserved token found to pad with"),
               fixable=candidate is not None, data={"pad": candidate})


@check("pad-out-of-range", "error", "T03", "re-pick the pad token from the vocabulary (--fix picks one)",
       fixable=True, needs=("tokens",))
def pad_out_of_range(s: Subject):
    rows = s.embedding_rows
    if rows is None or not _hf_only(s):
        return None
    ids = {"tokenizer pad_token": s.id_of(s.pad)}
    for name, cfg in (("config.json", s.text_config if s.config else None), ("generation_config.json", s.generation_config)):
        if cfg and isinstance(cfg.get("pad_token_id"), int):
            ids[f"{name} pad_token_id"] = cfg["pad_token_id"]
    bad = {k: v for k, v in ids.items() if isinstance(v, int) and (v >= rows or v < 0)}
    if not bad:
        return None
    candidate = pad_candidate(s)
    return Hit(", ".join(f"{k} = {v}" for k, v in bad.items()) + f" indexes past the {rows} embedding rows "
               "(CUDA device-side assert or garbage)", fixable=candidate is not None, data={"pad": candidate})


@check("eos-not-end-of-turn", "error", "T04, T05, X04",
       "add the template's end-of-turn id to generation_config.eos_token_id (--fix writes it)", fixable=True,
       needs=("template", "tokens"))
def eos_not_end_of_turn(s: Subject):
    eot = s.end_of_turn()
    eot_id = s.id_of(eot)
    if not eot or eot_id is None or eot == s.eos:
        return None
    stops, where = s.stop_ids()
    if eot_id in stops:
        return None
    return Hit(f"the template ends assistant turns with {eot!r} (id {eot_id}) but eos is {s.eos!r} and {where} "
               f"stops only on {sorted(stops)}: generation runs past the end of the turn",
               data={"add": [eot_id]})


@check("stop-tokens-incomplete", "error", "T05",
       "list every turn-closing token (e.g. <|eom_id|>) in generation_config.eos_token_id (--fix writes it)",
       fixable=True, needs=("template", "tokens"))
def stop_tokens_incomplete(s: Subject):
    eot = s.end_of_turn()
    if not eot or s.id_of(eot) is None:
        return None
    closers = set()
    for extra in ({"tools": probes.TOOLS}, {"tools": probes.TOOLS, "builtin_tools": ["brave_search"]}):
        text = s.try_render(probes.TOOL, False, **extra)
        if not text or probes.TOOL_ARG not in text:
            continue
        found = [m for _, m in probes.markers(text[text.index(probes.TOOL_ARG):].rstrip(), s.known_markers())]
        if found:
            closers.add(found[-1])
    stops, where = s.stop_ids()
    missing = {t: s.id_of(t) for t in closers if t not in (eot, s.eos) and s.id_of(t) is not None
               and s.id_of(t) not in stops}
    if not missing or s.id_of(eot) not in stops and eot != s.eos:
        return None  # nothing more, or eos-not-end-of-turn already reports the main token
    names = ", ".join(f"{t!r} ({i})" for t, i in sorted(missing.items()))
    return Hit(f"tool-call turns end with {names}, which {where} does not stop on: generation runs past "
               "those turns", data={"add": sorted(missing.values())})


@check("double-bos", "warning", "T06, X05",
       "tokenize rendered chats with add_special_tokens=False (ftcli does); don't strip bos from the template")
def double_bos(s: Subject):
    bos = s.bos
    if not bos or s.template is None:
        return None
    text = s.try_render(probes.UA) or s.try_render(probes.U, True)
    if text is None:
        return None
    hits = []
    if text.lstrip().startswith(bos + bos):
        hits.append(Hit(f"the template itself prints {bos!r} twice at the start", severity="error"))
    if s.tokenizer is not None and s.gguf is None:
        from ftcli import chat

        template = s.chat_template()
        try:
            ids = chat.encode(template, probes.UA, s.tokenizer, train_on="all")["input_ids"]
        except Exception:  # noqa: BLE001 - chat-template-mask reports encode failures
            ids = []
        bos_id = s.id_of(bos)
        if bos_id is not None and ids[:2] == [bos_id, bos_id] and not hits:
            hits.append(Hit(f"ftcli's own encoding of a chat starts with {bos!r} twice", severity="error"))
    if text.startswith(bos) and s.adds_bos and not hits:
        how = "tokenizer.ggml.add_bos_token is true" if s.gguf is not None else "the tokenizer adds it again on encode"
        hits.append(Hit(f"the template prints {bos!r} and {how}: tokenizer(rendered_chat) starts with bos twice in "
                        "any pipeline that encodes rendered text with special tokens (llama.cpp warns about it). "
                        "ftcli's training encodes chats without special tokens, so `ftcli train` is unaffected"))
    eos = s.eos
    if eos and text.rstrip().endswith(eos) and s.adds_eos:
        hits.append(Hit(f"the template ends with {eos!r} and the tokenizer appends it again on encode"))
    return hits


@check("missing-bos", "error", "T07", "make the tokenizer prepend bos (--fix sets the post-processor and add_bos_token)",
       fixable=True, needs=("tokens",))
def missing_bos(s: Subject):
    family = s.family
    if family not in ("gemma", "llama", "mistral"):
        return None
    severity = "error" if family == "gemma" else "warning"
    bos = s.bos
    if not bos or s.id_of(bos) is None:
        if family == "gemma":
            return Hit("Gemma needs <bos> in front of every sequence, and this tokenizer has no bos token",
                       fixable=False)
        return None
    if s.gguf is not None:
        if s.adds_bos is False and not (s.template or "").lstrip().startswith(("{{ bos_token", "{{bos_token", "{{- bos_token")):
            return Hit(f"tokenizer.ggml.add_bos_token is false and the template does not print {bos!r}", severity,
                       fixable=False)
        return None
    missing = []
    if s.template is not None:
        if s.tokenizer is not None:
            from ftcli import chat

            try:
                ids = chat.encode(s.chat_template(), probes.UA, s.tokenizer, train_on="all")["input_ids"]
            except Exception:  # noqa: BLE001
                ids = None
            if ids is not None and ids[:1] != [s.id_of(bos)]:
                missing.append("chat samples")
        else:
            text = s.try_render(probes.UA)
            if text is not None and not text.startswith(bos) and s.adds_bos is False:
                missing.append("chat samples")
    if s.adds_bos is False:
        missing.append("plain-text rows (format: text, packing)")
    if not missing:
        return None
    return Hit(f"{' and '.join(missing)} do not start with {bos!r}"
               + (": Gemma without <bos> produces nonsense and trains with a much higher loss" if family == "gemma"
                  else ": Llama/Mistral-style models lose quality without bos"), severity)


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
    for pp in _template_processors(tj.get("post_processor")):
        for name, spec in (pp.get("special_tokens") or {}).items():
            for token, i in zip(spec.get("tokens") or [], spec.get("ids") or []):
                real = s.id_of(token)
                if real != i or (rows is not None and i >= rows):
                    why = (f"is {real} in the vocabulary" if real is not None and real != i
                           else "is not in the vocabulary" if real is None else f"is past the {rows} embedding rows")
                    hits.append(Hit(f"the post-processor adds {token!r} as id {i}, but {token!r} {why}",
                                    fixable=real is not None and (rows is None or real < rows)))
    return hits


def _template_processors(pp) -> list[dict]:
    if not isinstance(pp, dict):
        return []
    if pp.get("type") == "Sequence":
        return [x for inner in pp.get("processors") or [] for x in _template_processors(inner)]
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


