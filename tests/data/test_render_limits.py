"""Chat templates that loop for ever or write without end are stopped, with the template named, wherever they
are rendered: training and export (templates.render) and the doctor (probes.render)."""

from __future__ import annotations

import threading
import time

import pytest
from transformers import AutoTokenizer

from ftcli.data import render_limits, templates
from ftcli.doctor import probes
from helpers.doctor import builtin_dir

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}"
FLOOD = "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture
def short_limit(monkeypatch):
    monkeypatch.setattr(render_limits, "SECONDS", 0.5)
    monkeypatch.setattr(render_limits, "_timed_out", {})


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_dir("tiny-llama3"))


def test_a_python_loop_is_interrupted_and_later_code_is_untouched(short_limit):
    started = time.monotonic()
    with pytest.raises(render_limits.LimitExceeded, match="did not finish within 0.5 s"):
        with render_limits.time_limit():
            while True:
                pass
    assert time.monotonic() - started < 10
    time.sleep(0.7)  # a withdrawn timeout must never land in the code that follows
    with render_limits.time_limit():
        assert sum(range(1000)) == 499500


def test_the_limit_holds_in_any_thread(short_limit):
    caught = []

    def work():
        try:
            with render_limits.time_limit():
                while True:
                    pass
        except render_limits.LimitExceeded as err:
            caught.append(str(err))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and caught


def test_looping_template_in_training_and_export_names_the_template(short_limit, tokenizer):
    template = templates.ChatTemplate("loop.jinja", LOOP, "<|eot_id|>", ("<|eot_id|>",))
    with pytest.raises(templates.ChatTemplateError, match=r"chat template 'loop.jinja' was stopped: it did not finish"):
        templates.render(template, CHAT, tokenizer)
    started = time.monotonic()  # the same template fails at once after that: no second wait per row
    with pytest.raises(templates.ChatTemplateError, match="loop.jinja"):
        templates.encode(template, CHAT, tokenizer)
    assert time.monotonic() - started < 0.4


def test_flooding_template_is_stopped_by_its_output_size(monkeypatch, tokenizer):
    monkeypatch.setattr(render_limits, "MAX_CHARS", 10_000)
    monkeypatch.setattr(render_limits, "SECONDS", 60.0)  # so that only the size cap can stop it
    template = templates.ChatTemplate("flood", FLOOD, None, ())
    with pytest.raises(templates.ChatTemplateError, match=r"'flood' was stopped: it wrote more than the limit of 10,0"):
        templates.render(template, CHAT, tokenizer)  # while streaming: 10**11 characters would never fit in memory
    one_chunk = templates.ChatTemplate("chunk", "{{ 'x' * 50000 }}", None, ())
    with pytest.raises(templates.ChatTemplateError, match=r"'chunk' was stopped: it wrote more than the limit"):
        templates.render(one_chunk, CHAT, tokenizer)
    ok = templates.ChatTemplate("ok", "{{ messages[0].content * 3 }}", None, ())
    assert templates.render(ok, CHAT, tokenizer) == "hihihi"  # negative control


def test_doctor_rendering_stops_looping_and_flooding_templates(short_limit, monkeypatch):
    with pytest.raises(probes.RenderError, match="stopped: it did not finish within 0.5 s"):
        probes.render(LOOP, CHAT)
    monkeypatch.setattr(render_limits, "MAX_CHARS", 100_000)
    started = time.monotonic()
    with pytest.raises(probes.RenderError, match="more than the limit of 100,"):
        probes.render(FLOOD, CHAT)  # stopped while streaming, long before 10**11 characters
    assert time.monotonic() - started < 5
    assert probes.render("{{ messages[1].content }}", CHAT) == "hello"
