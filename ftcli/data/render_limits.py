"""A time and output-size limit around one chat-template rendering.

Jinja's sandbox blocks unsafe attributes but not work: `{% for i in range(100000) %}{% for j in
range(100000) %}` runs for hours. Rendering is plain Python (Jinja compiles templates to Python
code), so a watchdog thread can stop it: when the time is up it raises RenderTimeout inside the
rendering thread with CPython's PyThreadState_SetAsyncExc, which is delivered between two bytecodes,
like Ctrl-C, from any thread. The output is counted while it streams (the doctor's own renderer,
and transformers' through `capped_stream`), so a flood stops at the size limit long before memory
runs out. A single C-level operation (one huge string repeat) is not interrupted; the size check
still refuses its result.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import threading
import time

SECONDS = float(os.environ.get("FTCLI_TEMPLATE_TIMEOUT", "10"))  # one conversation renders in milliseconds
MAX_CHARS = int(os.environ.get("FTCLI_TEMPLATE_MAX_CHARS", str(8 * 1024 * 1024)))  # ~2M tokens of text


class RenderTimeout(BaseException):
    """Raised inside the rendering thread. A BaseException, so that `except Exception` in the template engine
    or in transformers cannot swallow it."""


class LimitExceeded(Exception):
    """The rendering ran too long or wrote too much; the message says which and names the limit."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class _Watchdog:
    """One daemon thread for every limited block: it sleeps until the nearest deadline, so that a block costs
    a dict entry, not a thread (a dataset renders each of its rows several times)."""

    def __init__(self):
        self.wake = threading.Condition()
        self.blocks: dict[int, list] = {}  # block id -> [thread id, deadline, fired]
        self.thread: threading.Thread | None = None

    def enter(self, seconds: float) -> int:
        with self.wake:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="ftcli-render-watchdog", daemon=True)
                self.thread.start()
            block = [threading.get_ident(), time.monotonic() + seconds, False]
            self.blocks[id(block)] = block
            self.wake.notify()
            return id(block)

    def leave(self, key: int) -> None:
        """The block is over: a RenderTimeout fired at it but not yet delivered is withdrawn."""
        with self.wake:
            _, _, fired = self.blocks.pop(key, (None, None, False))
            if fired:
                _raise_in(threading.get_ident(), None)

    def _run(self):
        with self.wake:
            while True:
                now = time.monotonic()
                for block in self.blocks.values():
                    if not block[2] and block[1] <= now:
                        block[2] = True
                        _raise_in(block[0], RenderTimeout)
                waiting = [b[1] for b in self.blocks.values() if not b[2]]
                self.wake.wait(max(0.0, min(waiting) - now) if waiting else None)


_watchdog = _Watchdog()
# A forked child (a DataLoader worker) has no watchdog thread, and a lock that may have been held at the fork.
os.register_at_fork(after_in_child=_watchdog.__init__)


@contextlib.contextmanager
def time_limit(seconds: float | None = None):
    """Raise LimitExceeded if the block runs longer than `seconds` (interrupting it)."""
    seconds = SECONDS if seconds is None else seconds
    key = _watchdog.enter(seconds)
    try:
        try:
            yield
        finally:
            _watchdog.leave(key)
    except RenderTimeout:
        raise LimitExceeded(f"it did not finish within {seconds:g} s (a loop that never ends, or one far too "
                            "long?); the limit is FTCLI_TEMPLATE_TIMEOUT seconds") from None


_timed_out: dict[int, str] = {}  # hash of a template's source -> why it was stopped


@contextlib.contextmanager
def limited(source: str):
    """time_limit for rendering `source`; a template that ran out of time once fails at once after that, so
    that a doctor's twenty probes or a dataset's thousand rows do not each wait for the limit."""
    key = hash(source)
    if key in _timed_out:
        raise LimitExceeded(_timed_out[key])
    try:
        with time_limit():
            yield
    except LimitExceeded as err:
        _timed_out[key] = str(err)
        raise


def check_size(text: str, max_chars: int | None = None) -> str:
    """`text`, unless it is longer than any real conversation could render to."""
    max_chars = MAX_CHARS if max_chars is None else max_chars
    if len(text) > max_chars:
        raise LimitExceeded(f"it wrote {len(text):,} characters, more than the limit of {max_chars:,} "
                            "(FTCLI_TEMPLATE_MAX_CHARS)")
    return text


_stream_cap: contextvars.ContextVar[int | None] = contextvars.ContextVar("ftcli_stream_cap", default=None)


@contextlib.contextmanager
def capped_stream(template, max_chars: int):
    """Make a compiled Jinja `template` join its output through stream_limited while the block runs, so that a
    flood stops at `max_chars` instead of filling memory before the size check can see it. Jinja's
    Template.render joins the output chunks with `environment.concat`; outside this block the cap is off and the
    join is the plain one."""
    env = getattr(template, "environment", None)
    if env is not None and not getattr(env, "_ftcli_capped", False):
        env.concat = _capped_concat
        env._ftcli_capped = True
    token = _stream_cap.set(max_chars)
    try:
        yield
    finally:
        _stream_cap.reset(token)


def _capped_concat(chunks) -> str:
    cap = _stream_cap.get()
    return "".join(chunks) if cap is None else stream_limited(chunks, cap)


def stream_limited(chunks, max_chars: int | None = None) -> str:
    """Join a template's output chunks (Jinja's `generate()`), stopping as soon as they pass the size limit."""
    max_chars = MAX_CHARS if max_chars is None else max_chars
    parts, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_chars:
            raise LimitExceeded(f"it wrote more than the limit of {max_chars:,} characters "
                                "(FTCLI_TEMPLATE_MAX_CHARS)")
        parts.append(chunk)
    return "".join(parts)
