"""An Ollama Modelfile whose TEMPLATE renders exactly what the model's own Jinja template renders.

No lookup table by model name: the Jinja template is *measured*. We render it on probe
conversations whose contents are unique markers and cut the output at the markers; what
lies between two consecutive messages is the "join" for that pair of roles (e.g. between a
user and an assistant message in ChatML: "<|im_end|>\\n<|im_start|>assistant\\n"), and what
follows the last user message is the generation prompt. That model of the template is
then checked against the Jinja rendering on golden conversations (system, multi-turn,
unicode, newlines) and written as Go text/template: a `range` over `.Messages` that
remembers the previous role. If the model of the template does not reproduce the Jinja
output on every golden conversation, the export stops with exit 2 rather than falling back
to a bare `{{ .Prompt }}`.

The BOS token is left out of TEMPLATE when llama.cpp adds it itself (add_bos_token), as
Ollama expects.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ftcli.data import templates
from ftcli.data.messages import fold_system
from ftcli.errors import BadInput

ROLES = ("system", "user", "assistant")
# The state after a message is its role, except that a system message which is not the first
# message is "system-mid" (Gemma folds a leading system message into the first user turn but
# renders a later one as a turn of its own).
STATES = ("", "system", "system-mid", "user", "assistant")
_MARK = "\u2063MSG{}\u2063"  # invisible separator around an index: never produced by a template itself

GOLDEN = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "What is 12 plus 7?"},
     {"role": "assistant", "content": "12 plus 7 is 19."},
     {"role": "user", "content": "And 9 times 8?"}],
    [{"role": "system", "content": "Answer briefly.\nUse plain words."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one, in French: café?"},
     {"role": "assistant", "content": "Rouge 🙂\n\nThat means red."},
     {"role": "user", "content": "Thanks.\nBye"}],
]


def next_state(prev: str, role: str, split_system: bool = True) -> str:
    if role == "system" and prev != "" and split_system:
        return "system-mid"
    return role


@dataclass
class ChatShape:
    """The template as joins between consecutive message states plus an ending per last state."""
    joins: dict[tuple[str, str], str]
    ends: dict[str, str]
    roles: tuple[str, ...]
    split_system: bool = True
    notes: list[str] = field(default_factory=list)

    def join(self, prev: str, role: str) -> str:
        if (prev, role) in self.joins:
            return self.joins[(prev, role)]
        for other in ("assistant", "user", "system-mid", "system", ""):  # outside what the template accepts
            if (other, role) in self.joins:
                return self.joins[(other, role)]
        return ""

    def end(self, last: str) -> str:
        if last in ("", "assistant"):
            return ""  # nothing to answer, or Ollama continues a trailing assistant message
        return self.ends.get(last, self.ends.get("user", ""))

    def states(self) -> tuple[str, ...]:
        return STATES if self.split_system else tuple(s for s in STATES if s != "system-mid")

    def render(self, messages: list[dict]) -> str:
        """What the Go template renders for `messages` (kept in step with go_template)."""
        out, prev = [], ""
        for m in messages:
            if m["role"] not in self.roles:
                continue
            out += [self.join(prev, m["role"]), m["content"]]
            prev = next_state(prev, m["role"], self.split_system)
        out.append(self.end(prev))
        return "".join(out)


class _Renderer:
    """The Jinja side: the training template rendered with the generation prompt, BOS stripped
    when llama.cpp adds it itself."""

    def __init__(self, template, tokenizer, strip_bos: bool):
        self.template, self.tokenizer = template, tokenizer
        self.bos = tokenizer.bos_token if strip_bos else None

    def __call__(self, messages: list[dict]) -> str | None:
        if not self.template.supports_system:  # as training does: system text joins the first user turn
            messages = fold_system(messages)
        try:
            text = templates.render(self.template, messages, self.tokenizer, add_generation_prompt=True)
        except templates.ChatTemplateError:
            return None
        if self.bos and text.startswith(self.bos):
            text = text[len(self.bos):]
        return text


def _probe(render: _Renderer, roles: list[str]) -> list[str] | None:
    """Render marker messages with these roles; the literal pieces around the markers."""
    messages = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
    text = render(messages)
    if text is None:
        return None
    pieces, pos = [], 0
    for i in range(len(roles)):
        at = text.find(_MARK.format(i), pos)
        if at < 0 or text.count(_MARK.format(i)) != 1:
            return None  # the template dropped or repeated this message's content
        pieces.append(text[pos:at])
        pos = at + len(_MARK.format(i))
    pieces.append(text[pos:])
    return pieces


def _probe_paths() -> list[list[str]]:
    """Every role sequence of length 1-3, closed with a user turn when it ends with the assistant
    (we model generation after a user turn; a trailing assistant turn may render differently)."""
    paths = [[a] for a in ROLES]
    paths += [[a, b] for a in ROLES for b in ROLES]
    paths += [[a, b, c] for a in ROLES for b in ROLES for c in ROLES]
    return [p + ["user"] if p[-1] == "assistant" else p for p in paths]


def derive_shape(template, tokenizer, strip_bos: bool) -> ChatShape:
    """Measure the template's joins and endings with marker conversations."""
    render = _Renderer(template, tokenizer, strip_bos)
    seen: dict[tuple[str, str], set[str]] = {}
    ends: dict[str, set[str]] = {}
    for path in _probe_paths():
        pieces = _probe(render, path)
        if pieces is None:
            continue
        prev = ""
        for role, piece in zip(path, pieces):
            seen.setdefault((prev, role), set()).add(piece)
            prev = next_state(prev, role)
        ends.setdefault(prev, set()).add(pieces[-1])
    ambiguous = [k for k, v in seen.items() if len(v) > 1] + [k for k, v in ends.items() if len(v) > 1]
    if ambiguous:
        raise _cannot(template, "what it writes between two messages depends on more than their roles "
                      f"(e.g. {ambiguous[0]})")
    if ("", "user") not in seen or "user" not in ends:
        raise _cannot(template, "it does not render a conversation of a single user message")
    joins = {k: next(iter(v)) for k, v in seen.items()}
    ending = {k: next(iter(v)) for k, v in ends.items()}
    roles = tuple(r for r in ROLES if any(k[1] == r for k in joins))
    # One "system" state is enough when a later system message behaves like a first one.
    same = all(joins.get(("system", r)) == joins.get(("system-mid", r)) for r in ROLES
               if ("system", r) in joins and ("system-mid", r) in joins) and \
        ending.get("system", ending.get("system-mid")) == ending.get("system-mid", ending.get("system"))
    shape = ChatShape(joins=joins, ends=ending, roles=roles, split_system=not same)
    if "system" not in roles:
        shape.notes.append("the model's template has no system role: system messages are dropped")
    elif not template.supports_system:
        shape.notes.append("the model's template has no system role: a leading system message is folded into "
                           "the first user turn, as in training")
    return shape


def _cannot(template, why: str) -> BadInput:
    return BadInput(f"cannot write an Ollama TEMPLATE equal to the chat template {template.name!r}: {why}",
                    hint="export without --ollama (the GGUF carries the Jinja template in tokenizer.chat_template), "
                         "or train with a template family from templates/")


def check_shape(shape: ChatShape, template, tokenizer, strip_bos: bool) -> int:
    """Compare the shape's rendering with the Jinja rendering on every golden conversation."""
    render = _Renderer(template, tokenizer, strip_bos)
    checked = 0
    for conversation in GOLDEN:
        if "system" not in shape.roles and any(m["role"] == "system" for m in conversation):
            continue
        want = render(conversation)
        if want is None:
            continue
        got = shape.render(conversation)
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise _cannot(template, f"on a {len(conversation)}-message golden conversation the translation "
                          f"differs at character {i}: Jinja {want[i:i + 40]!r}, Go {got[i:i + 40]!r}")
        checked += 1
    if checked == 0:
        raise _cannot(template, "it rendered none of the golden conversations")
    return checked


# ----------------------------------------------------------------------------- Go text/template
def _literal(text: str) -> str:
    """Template text for a literal: raw where safe, else a Go string constant."""
    if not text:
        return ""
    if "{{" in text or '"""' in text:
        return "{{ " + json.dumps(text, ensure_ascii=True) + " }}"  # JSON escapes are valid Go escapes
    return text


def _switch(var: str, cases: dict[str, str]) -> str:
    """{{ if eq $var "a" }}X{{ else if ... }}{{ else }}Y{{ end }}, the most common literal as else."""
    if len(set(cases.values())) == 1:
        return _literal(next(iter(cases.values())))
    common = Counter(cases.values()).most_common(1)[0][0]
    groups: dict[str, list[str]] = {}
    for key, text in cases.items():
        if text != common:
            groups.setdefault(text, []).append(key)
    out = ""
    for i, (text, keys) in enumerate(groups.items()):
        test = f'eq {var} "{keys[0]}"' if len(keys) == 1 else "or " + " ".join(f'(eq {var} "{k}")' for k in keys)
        out += ("{{ if " if i == 0 else "{{ else if ") + test + " }}" + _literal(text)
    return out + ("{{ else }}" + _literal(common) if common else "") + "{{ end }}"


def _set_state(shape: ChatShape, role: str) -> str:
    if role == "system" and shape.split_system:
        return '{{ if eq $prev "" }}{{ $prev = "system" }}{{ else }}{{ $prev = "system-mid" }}{{ end }}'
    return f'{{{{ $prev = "{role}" }}}}'


def go_template(shape: ChatShape) -> str:
    """The Go text/template (Ollama TEMPLATE) equivalent to shape.render()."""
    lines = ['{{- $prev := "" }}', "{{- range .Messages }}"]
    for i, role in enumerate(shape.roles):
        head = "{{- if " if i == 0 else "{{- else if "
        joins = _switch("$prev", {p: shape.join(p, role) for p in shape.states()})
        lines.append(f'{head}eq .Role "{role}" }}}}{joins}{{{{ .Content }}}}{_set_state(shape, role)}')
    lines += ["{{- end }}", "{{- end }}"]
    ending = _switch("$prev", {p: shape.end(p) for p in shape.states()})
    if ending:
        lines.append("{{- " + ending[3:] if ending.startswith("{{ ") else ending)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Modelfile
@dataclass
class Modelfile:
    text: str
    template: str
    stops: list[str]
    golden_checked: int
    notes: list[str]


def stop_strings(template, tokenizer) -> list[str]:
    stops = [template.end_of_turn, *template.stop_tokens, tokenizer.eos_token]
    return [s for s in dict.fromkeys(s for s in stops if s) if '"' not in s]


def build_modelfile(gguf_file: str, template, tokenizer, strip_bos: bool, system: str | None = None,
                    parameters: dict | None = None, header: str = "") -> Modelfile:
    """Modelfile text for `gguf_file` (a path relative to the Modelfile)."""
    shape = derive_shape(template, tokenizer, strip_bos)
    checked = check_shape(shape, template, tokenizer, strip_bos)
    go = go_template(shape)
    stops = stop_strings(template, tokenizer)
    lines = [f"# {header}"] if header else []
    lines += [f"FROM ./{gguf_file}", "", f'TEMPLATE """{go}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    if system:
        if '"""' in system:
            raise BadInput('the system prompt contains """, which a Modelfile cannot quote')
        lines += ["", f'SYSTEM """{system}"""']
    return Modelfile(text="\n".join(lines) + "\n", template=go, stops=stops, golden_checked=checked,
                     notes=shape.notes)
