"""Render probes (research/doctor-bugs.md §0): render a chat template on fixed conversations in
a sandboxed Jinja environment configured like transformers' own, and find markers in the text.

Templates are untrusted input, so they only ever run in an ImmutableSandboxedEnvironment.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ftcli.data import render_limits

# Sentinels that cannot occur in a template; plain ASCII so every tokenizer can encode them.
SYS = "FtcliSystemS"
USER = "FtcliUserHi"
USER2 = "FtcliUserAgain"
REPLY = "FtcliReplyA"
REPLY_B = "QtcliReplyB"  # differs from REPLY in its first character (render-diff)
REASON = "FtcliReasonR"
ANSWER = "FtcliAnswerX"
TOOL_ARG = "FtcliToolArg"
FIXED_DATE = _dt.datetime(2024, 7, 26, 12, 0, 0)

U = [{"role": "user", "content": USER}]
UA = U + [{"role": "assistant", "content": REPLY}]
UB = U + [{"role": "assistant", "content": REPLY_B}]
SUA = [{"role": "system", "content": SYS}] + UA
UAU = UA + [{"role": "user", "content": USER2}]
UAUA = UAU + [{"role": "assistant", "content": REPLY_B}]
SUAU = SUA + [{"role": "user", "content": USER2}]
UU = U + [{"role": "user", "content": USER2}]
UAA = UA + [{"role": "assistant", "content": REPLY_B}]
THINK = U + [{"role": "assistant", "content": f"<think>\n{REASON}\n</think>\n\n{ANSWER}"}]
THINK_U = THINK + [{"role": "user", "content": USER2}]
TOOL = U + [{"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": TOOL_ARG}}}]}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]

# Strings that look like control markers: <|x|>, <｜x｜>, [INST] / [/INST], <x> / </x>.
MARKER_RE = re.compile(
    r"<\|[^|<>\s]{1,48}\|>"
    r"|<｜[^｜<>]{1,48}｜>"
    r"|\[/?[A-Z][A-Z_]{1,30}\]"
    r"|</?[A-Za-z][A-Za-z0-9_.▁-]{0,40}>"
)


class Clock:
    """A `strftime_now` stub for a fixed date (its repr keys the render cache)."""

    def __init__(self, when: _dt.datetime):
        self.when = when

    def __call__(self, fmt: str) -> str:
        return self.when.strftime(fmt)

    def __repr__(self) -> str:
        return f"Clock({self.when.isoformat()})"


class RenderError(Exception):
    """The template failed to compile or render; `str()` says why."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=256)
def compile_template(source: str) -> jinja2.Template:
    """The template compiled as transformers does (trim_blocks, lstrip_blocks, loopcontrols)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: FIXED_DATE.strftime(fmt)
    env.globals["namespace"] = jinja2.utils.Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise RenderError(f"syntax error on line {err.lineno}: {err.message}") from None
    except Exception as err:  # noqa: BLE001 - any compile failure is a finding, never a crash
        raise RenderError(f"{type(err).__name__}: {err}") from None


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (TRL training templates): render the body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def render(source: str, messages: list[dict], add_generation_prompt: bool = False,
           specials: dict | None = None, **extra) -> str:
    """Render `source`; every failure (syntax, raise_exception, type errors) becomes RenderError."""
    template = compile_template(source)
    context = {k: v for k, v in (specials or {}).items() if v is not None}
    context.update(extra)
    try:
        with render_limits.limited(source):
            return render_limits.stream_limited(
                template.generate(messages=messages, add_generation_prompt=add_generation_prompt, **context),
                render_limits.MAX_CHARS + 2 * len(json.dumps(messages)))
    except render_limits.LimitExceeded as err:
        raise RenderError(f"the template was stopped: {err}") from None
    except RenderError:
        raise
    except Exception as err:  # noqa: BLE001
        raise RenderError(f"{type(err).__name__}: {err}") from None


def template_literals(source: str) -> list[str]:
    """Every string constant in the template (for marker scans); [] when it does not parse."""
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _GenerationTag])
    try:
        tree = env.parse(source)
    except Exception:  # noqa: BLE001
        return []
    out = [node.value for node in tree.find_all(jinja2.nodes.Const) if isinstance(node.value, str)]
    out += [node.data for node in tree.find_all(jinja2.nodes.TemplateData)]
    return out


def markers(text: str, known: list[str] | tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(position, marker) of every known token string and marker-looking string in `text`, in order.

    At one position the longest match wins, so `<|im_end|>` is never read as `<|im_end`.
    """
    found: dict[int, str] = {}
    for token in known:
        if not token:
            continue
        start = 0
        while (i := text.find(token, start)) >= 0:
            if len(token) > len(found.get(i, "")):
                found[i] = token
            start = i + 1
    for m in MARKER_RE.finditer(text):
        if m.start() not in found:
            found[m.start()] = m.group(0)
    out, end = [], -1
    for pos in sorted(found):
        if pos >= end:  # skip markers inside a longer one
            out.append((pos, found[pos]))
            end = pos + len(found[pos])
    return out


def first_marker_after(text: str, pos: int, known=()) -> str | None:
    for i, token in markers(text, known):
        if i >= pos:
            return token
    return None
