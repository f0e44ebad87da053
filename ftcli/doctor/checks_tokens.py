"""Tokenizer special-token checks: pad, eos, stop tokens, bos (research/doctor-bugs.md section A, T01-T07;
the tokenizer-file checks T08-T15 are in checks_tokenizer_files.py)."""

from __future__ import annotations

from ftcli.data import templates
from ftcli.doctor import probes
from ftcli.doctor.readers import id_list
from ftcli.doctor.registry import Hit, check
from ftcli.doctor.subject import Subject

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
        template = s.chat_template()
        try:
            ids = templates.encode(template, probes.UA, s.tokenizer, train_on="all")["input_ids"]
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
            try:
                ids = templates.encode(s.chat_template(), probes.UA, s.tokenizer, train_on="all")["input_ids"]
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
