"""Run generated Python against test cases in a separate, limited process (the `code_tests` reward).

Never in the training process: every completion runs in a fresh `python -I -S -B` child that
first lowers its own limits (address space, CPU seconds, size of what it may write, open
files, no core dumps), then installs an audit hook that refuses file writes, deletions,
renames, new processes, sockets and ctypes, and only then executes the code. The parent
enforces a wall-clock timeout (killing the whole process group) and caps the output it
reads. Anything that times out, crashes, runs out of memory or writes too much scores 0.

This contains mistakes and resource abuse by a policy being trained; it is not a security
boundary for code written by an adversary (run such jobs inside a container).

Test cases, from a dataset column, may be:
  - a string of Python (asserts) or a list of such strings: each string is one case, run after
    the program in the same namespace;
  - a list of {"input": ..., "output": ...} (or {"inputs": [...], "outputs": [...]}, as APPS
    stores them, possibly as a JSON string): the program reads stdin and must print the output.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

_RUNNER = r'''
import io, json, os, resource, sys

def _limits(cfg):
    for name, value in (("RLIMIT_AS", cfg["memory"]), ("RLIMIT_CPU", cfg["cpu"]), ("RLIMIT_FSIZE", cfg["output"]),
                        ("RLIMIT_CORE", 0), ("RLIMIT_NOFILE", 64)):
        # The CPU soft limit sends SIGXCPU, the hard one a second later SIGKILL.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        try:
            resource.setrlimit(getattr(resource, name), (value, hard))
        except (ValueError, OSError, AttributeError):
            if name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE"):
                raise

_BLOCKED_PREFIXES = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
                     "os.killpg", "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown",
                     "os.chflags", "os.link", "os.symlink", "os.truncate", "os.utime", "os.setxattr",
                     "os.removexattr", "os.mkfifo", "os.mknod", "os.putenv", "os.unsetenv", "os.chdir",
                     "subprocess.", "socket.", "ctypes.", "shutil.", "pty.", "resource.setrlimit",
                     "sys.addaudithook", "_posixsubprocess", "signal.")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def _hook(event, args):
    if event == "open":
        mode, flags = args[1], args[2]
        writes = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            raise PermissionError("sandbox: writing files is not allowed")
    elif event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")

class _Capped(io.StringIO):
    def __init__(self, limit):
        super().__init__()
        self._left = limit
    def write(self, text):
        self._left -= len(text)
        if self._left < 0:
            raise RuntimeError("sandbox: output limit exceeded")
        return super().write(text)

def _same_output(got, want):
    return [line.rstrip() for line in got.strip().splitlines()] == [line.rstrip() for line in want.strip().splitlines()]

def _main():
    payload = json.loads(sys.stdin.read())
    nonce, code, cases, cfg = payload["nonce"], payload["code"], payload["cases"], payload["limits"]
    _limits(cfg)
    real_stdout = sys.stdout
    sys.stdin = io.StringIO("")
    sys.addaudithook(_hook)
    passed = 0
    try:
        program = compile(code, "<completion>", "exec")
    except BaseException:
        program = None
    if program is not None:
        asserts = [c for c in cases if c["kind"] == "assert"]
        if asserts:
            ns = {"__name__": "__main__"}
            try:
                exec(program, ns)
                ok = True
            except BaseException:
                ok = False
            if ok:
                for case in asserts:
                    try:
                        exec(compile(case["code"], "<test>", "exec"), ns)
                        passed += 1
                    except BaseException:
                        pass
        for case in (c for c in cases if c["kind"] == "io"):
            capture = _Capped(cfg["output"])
            sys.stdin, sys.stdout = io.StringIO(case["input"]), capture
            try:
                exec(program, {"__name__": "__main__"})
                ok = True
            except SystemExit as stop:
                ok = stop.code in (None, 0)
            except BaseException:
                ok = False
            finally:
                sys.stdout, sys.stdin = real_stdout, io.StringIO("")
            if ok and _same_output(capture.getvalue(), case["output"]):
                passed += 1
    sys.stdout = real_stdout
    real_stdout.write("\n" + nonce + json.dumps({"passed": passed}) + "\n")
    real_stdout.flush()

_main()
'''


@dataclass
class Result:
    passed: int
    total: int
    status: str  # ok | timeout | killed | no_result | no_code | no_tests | error

    def score(self, partial_credit: bool = True) -> float | None:
        if self.total == 0:
            return None  # nothing to check: TRL treats None as "not scored"
        if self.status != "ok":
            return 0.0
        if partial_credit:
            return self.passed / self.total
        return float(self.passed == self.total)


_PY_FENCE = re.compile(r"```[ \t]*(python|py|python3)?[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The last ```python block (or last unlabelled block); else the text after any </think>."""
    blocks = _PY_FENCE.findall(text or "")
    labelled = [body for lang, body in blocks if lang]
    if labelled:
        return labelled[-1]
    if blocks:
        return blocks[-1][1]
    end = (text or "").rfind("</think>")
    return (text[end + len("</think>"):] if end >= 0 else (text or "")).strip()


def normalise_tests(value) -> list[dict]:
    """Dataset test cases -> [{"kind": "assert", "code"}] / [{"kind": "io", "input", "output"}]."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("the test cases are an empty string")
        return [{"kind": "assert", "code": value}]
    if isinstance(value, dict) and ("inputs" in value or "input_output" in value):
        value = value.get("input_output", value)
        if isinstance(value, str):
            value = json.loads(value)
        ins, outs = value.get("inputs"), value.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ValueError("`inputs` and `outputs` must be lists of the same length")
        return [{"kind": "io", "input": _text(i), "output": _text(o)} for i, o in zip(ins, outs)]
    if isinstance(value, list) and value:
        cases = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                cases.append({"kind": "assert", "code": item})
            elif isinstance(item, dict) and "input" in item and "output" in item:
                cases.append({"kind": "io", "input": _text(item["input"]), "output": _text(item["output"])})
            else:
                raise ValueError(f"test case {i} must be a string of Python or a mapping with input and output, "
                                 f"got {type(item).__name__}")
        return cases
    raise ValueError("test cases must be a string of Python asserts, a list of them, or a list of "
                     f"{{input, output}} mappings; got {type(value).__name__}")


def _text(value) -> str:
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return str(value)


def run(code: str, tests, timeout: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 65536) -> Result:
    """Run `code` against `tests` in a limited child process and count the cases it passes."""
    try:
        cases = normalise_tests(tests)
    except (ValueError, TypeError):
        return Result(0, 0, "no_tests")
    if not code or not code.strip():
        return Result(0, len(cases), "no_code")
    nonce = secrets.token_hex(16)
    payload = json.dumps({
        "nonce": nonce, "code": code, "cases": cases,
        # The CPU-seconds limit is a backstop behind the parent's wall-clock timeout: one thread cannot
        # spend more CPU than wall time, so a busy loop hits the wall clock first and reads as a timeout.
        "limits": {"memory": memory_mb * 1024 * 1024, "cpu": math.ceil(timeout) + 3,
                   "output": max_output_bytes + 4096},
    })
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8"}
    with tempfile.TemporaryDirectory(prefix="ftcli-sandbox-") as workdir, \
            tempfile.TemporaryFile(dir=workdir) as out:
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _RUNNER], stdin=subprocess.PIPE,
                                    stdout=out, stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                    start_new_session=True)
        except OSError:
            return Result(0, len(cases), "error")
        try:
            proc.communicate(payload.encode("utf-8"), timeout=timeout + 1.0)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return Result(0, len(cases), "timeout")
        finally:
            _kill(proc)  # reap any stragglers in the group
        if proc.returncode == -signal.SIGXCPU:
            return Result(0, len(cases), "timeout")  # the CPU-seconds backstop fired
        if proc.returncode != 0:
            return Result(0, len(cases), "killed")
        out.seek(0)
        text = out.read(max_output_bytes + 8192).decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(nonce)]
    if not lines:
        return Result(0, len(cases), "no_result")
    passed = int(json.loads(lines[-1][len(nonce):])["passed"])
    return Result(min(passed, len(cases)), len(cases), "ok")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_many(jobs: list[tuple[str, object]], timeout: float = 5.0, memory_mb: int = 512,
             max_output_bytes: int = 65536, workers: int | None = None) -> list[Result]:
    """Run (code, tests) pairs in parallel child processes; results in the same order."""
    if not jobs:
        return []
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], timeout, memory_mb, max_output_bytes), jobs))
