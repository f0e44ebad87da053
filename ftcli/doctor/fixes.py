"""Fixes: each fixable finding adds its change to a `Patch`; ftcli/doctor/patching.py then applies the
patch either in memory (tokenizer, model, ChatTemplate at training start) or writes corrected copies
of the files into an output folder (`ftcli doctor --fix OUT_DIR`). Never in place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from ftcli.data import templates
from ftcli.doctor import probes
from ftcli.doctor.checks_template import header_every_turn
from ftcli.doctor.registry import Finding
from ftcli.doctor.subject import Subject


@dataclass
class Patch:
    special: dict[str, str] = field(default_factory=dict)  # "pad_token" -> token string
    pad_id: int | None = None
    gen_eos_add: list[int] = field(default_factory=list)
    tokenizer_config: dict = field(default_factory=dict)  # flags to set in tokenizer_config.json
    config: dict = field(default_factory=dict)  # keys to set in config.json (the text config)
    template: str | None = None
    make_special: set[str] = field(default_factory=set)
    prepend_bos: bool = False
    rebuild_post_processor: bool = False
    decoder_from_json: bool = False
    mistral_regex: bool = False
    untrained_ids: list[int] = field(default_factory=list)
    retie: bool = False
    fold_system: bool = False
    eager_attention: bool = False
    applied: list[str] = field(default_factory=list)  # check ids

    @property
    def touches_weights(self) -> bool:
        return bool(self.untrained_ids) or self.retie


FIXERS: dict[str, Callable] = {}


def fixer(*ids: str):
    def register(func):
        for i in ids:
            FIXERS[i] = func
        return func

    return register


@fixer("pad-missing", "pad-is-eos", "pad-out-of-range")
def _pad(s: Subject, f: Finding, p: Patch) -> bool:
    token = f.data.get("pad")
    if not token or s.id_of(token) is None:
        return False
    p.special["pad_token"] = token
    p.pad_id = s.id_of(token)
    return True


@fixer("eos-not-end-of-turn", "stop-tokens-incomplete")
def _eos(s, f, p):
    add = [i for i in f.data.get("add", []) if i not in p.gen_eos_add]
    p.gen_eos_add += add
    return bool(f.data.get("add"))


@fixer("missing-bos")
def _bos(s, f, p):
    if not s.bos or s.id_of(s.bos) is None:
        return False
    p.prepend_bos = True
    p.tokenizer_config["add_bos_token"] = True
    return True


@fixer("post-processor-mismatch")
def _pp_flags(s, f, p):
    p.tokenizer_config.update(f.data)
    return True


@fixer("post-processor-stale")
def _pp_ids(s, f, p):
    p.rebuild_post_processor = True
    return True


@fixer("tokenizer-files-disagree")
def _decoder(s, f, p):
    p.decoder_from_json = True
    return True


@fixer("special-token-not-special")
def _special(s, f, p):
    p.make_special |= set(f.data.get("tokens", []))
    return True


@fixer("mistral-regex")
def _regex(s, f, p):
    p.mistral_regex = True
    return True


@fixer("add-bos-without-bos")
def _no_bos(s, f, p):
    if s.gguf is not None:
        return False
    p.tokenizer_config["add_bos_token"] = False
    return True


@fixer("max-length")
def _max_length(s, f, p):
    value = f.data.get("value")
    if not value:
        return False
    p.tokenizer_config["model_max_length"] = int(value)
    return True


@fixer("roundtrip")
def _roundtrip(s, f, p):
    p.tokenizer_config["clean_up_tokenization_spaces"] = False
    return True


@fixer("gemma-activation")
def _act(s, f, p):
    p.config["hidden_activation"] = "gelu_pytorch_tanh"
    return True


@fixer("gemma2-query-scale")
def _qscale(s, f, p):
    p.config["query_pre_attn_scalar"] = f.data["value"]
    return True


@fixer("tied-embeddings")
def _retie(s, f, p):
    p.retie = True
    return True


@fixer("untrained-special-tokens")
def _untrained(s, f, p):
    p.untrained_ids = sorted(set(p.untrained_ids) | set(f.data.get("ids", [])))
    return bool(f.data.get("ids"))


@fixer("softcapping-attention")
def _eager(s, f, p):
    if s.model is None:
        return False
    p.eager_attention = True
    return True


@fixer("template-drops-system")
def _fold(s, f, p):
    if s.kind != "training":
        return False
    p.fold_system = True
    return True


@fixer("template-no-generation-prompt")
def _agp(s, f, p):
    source = p.template or s.template
    header = f.data.get("header")
    new = source + "{% if add_generation_prompt %}{{ " + _jinja_str(header) + " }}{% endif %}"
    want = s.try_render(probes.UA, False, source)
    got = s.try_render(probes.U, True, new)
    if want is None or got is None or not want.startswith(got) or got == s.try_render(probes.U, False, new):
        return False
    p.template = new
    return True


@fixer("template-header-every-turn")
def _header(s, f, p):
    source = p.template or s.template
    header = f.data["header"]
    wrapped = ("{% set ftcli_text %}" + source + "{% endset %}{% set ftcli_header = " + _jinja_str(header) + " %}"
               "{% if add_generation_prompt %}{{ ftcli_text if ftcli_text.endswith(ftcli_header) "
               "else ftcli_text ~ ftcli_header }}{% elif ftcli_text.endswith(ftcli_header) %}"
               "{{ ftcli_text[:ftcli_text|length - ftcli_header|length] }}{% else %}{{ ftcli_text }}{% endif %}")
    if header_every_turn(s, wrapped) is not None or s.try_render(probes.UAUA, False, wrapped) is None:
        return False
    p.template = _matching_family(s, wrapped) or wrapped
    return True


def _matching_family(s: Subject, reference: str) -> str | None:
    """A shipped family template that renders exactly like `reference` on the probe chats."""
    for name in templates.FAMILIES:
        source = templates.load_family(name).source
        if all(s.try_render(conv, agp, source) == s.try_render(conv, agp, reference) is not None
               for conv, agp in ((probes.UA, False), (probes.UAUA, False), (probes.U, True), (probes.SUA, False))):
            return source
    return None


@fixer("gemma-turn-typo")
def _typo(s, f, p):
    source = (p.template or s.template).replace("<end_of_turn>model", "<start_of_turn>model")
    text = s.try_render(probes.U, True, source)
    if text is None or not text.endswith("<start_of_turn>model\n"):
        return False
    p.template = source
    return True


def _jinja_str(text: str) -> str:
    """A Jinja string literal for `text` (ASCII-escaped, so Jinja's unicode-escape reads it back)."""
    return json.dumps(text, ensure_ascii=True)


def plan(s: Subject, findings: list[Finding]) -> Patch:
    patch = Patch()
    for f in findings:
        func = FIXERS.get(f.check)
        if f.fixable and func is not None and func(s, f, patch):
            patch.applied.append(f.check)
    return patch
