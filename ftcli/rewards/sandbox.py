"""Run generated Python against test cases in a bubblewrap sandbox (the `code_tests` reward).

Never in the training process and never without the sandbox: each completion runs in one
`bwrap` call (isolation.py: unprivileged uid, new user/pid/net/ipc/uts namespaces, no run
directory, home or /etc, a private /tmp, --die-with-parent) where sandbox_child.py sets rlimits
(memory, CPU seconds, file size, processes, open files) before the code runs. The expected
answers never enter it: the sandbox returns the values of the test calls and what io programs
print, and cases.py judges them here. The parent enforces a wall-clock timeout (killing the
sandbox) and caps what it reads. Anything that times out, crashes, runs out of memory or floods
its output scores 0. Without a working bwrap, `run` raises SandboxUnavailable: there is no
in-process fallback. docs/security.md has the threat model.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import select
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ftcli.rewards import cases as test_cases, isolation, sandbox_child
from ftcli.rewards.cases import normalise_tests

__all__ = ["Result", "extract_code", "normalise_tests", "run", "run_many"]

MAX_PROCESSES = 32  # a fork bomb stops here (threads count too)
MAX_OPEN_FILES = 64
_CHILD_SOURCE = inspect.getsource(sandbox_child)


@dataclass
class Result:
    passed: int
    total: int
    status: str  # ok | timeout | killed | no_result | no_code | no_tests | error (the sandbox did not start)

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


def _limits(timeout: float, memory_mb: int, max_output_bytes: int) -> dict:
    # The CPU-seconds limit is a backstop behind the wall-clock timeout: one thread cannot spend more CPU
    # than wall time, so a busy loop hits the wall clock first and reads as a timeout.
    return {"memory": memory_mb * 1024 * 1024, "cpu": math.ceil(timeout) + 3, "file_size": max_output_bytes + 4096,
            "processes": MAX_PROCESSES, "open_files": MAX_OPEN_FILES, "core": 0}


def run(code: str, tests, timeout: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 65536) -> Result:
    """Run `code` against `tests` in the sandbox and count the cases it passes."""
    try:
        cases = normalise_tests(tests)
    except (ValueError, TypeError):
        return Result(0, 0, "no_tests")
    if not code or not code.strip():
        return Result(0, len(cases), "no_code")
    isolation.require()
    plan = test_cases.plan(cases)
    report_cap = max_output_bytes * (plan.total + 1) + 65536
    read_fd, write_fd = os.pipe()
    job = {"code": code, "asserts": plan.job_asserts, "io": plan.job_io, "channel": write_fd,
           "cap": max_output_bytes, "report_cap": report_cap,
           "limits": _limits(timeout, memory_mb, max_output_bytes)}
    argv = isolation.command(["-I", "-S", "-B", "-c", _CHILD_SOURCE])
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                pass_fds=(write_fd,), start_new_session=True, env={})  # bwrap too gets no secrets
    except OSError:
        os.close(read_fd)
        return Result(0, len(cases), "error")
    finally:
        os.close(write_fd)
    try:
        _send(proc, json.dumps(job).encode("utf-8"))
        answer, timed_out = _receive(read_fd, timeout + 1.0, report_cap + 4096)
    finally:
        os.close(read_fd)
        _kill(proc)
    return _judge(plan, answer, timed_out)


def _send(proc: subprocess.Popen, payload: bytes) -> None:
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the sandbox did not start: no answer comes back, which reads as an error


def _receive(fd: int, timeout: float, cap: int) -> tuple[bytes | None, bool]:
    """Everything the supervisor writes on the result pipe until it closes; (None, True) past the deadline."""
    deadline, chunks, size = time.monotonic() + timeout, [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return None, False


def _judge(plan: test_cases.Plan, answer: bytes | None, timed_out: bool) -> Result:
    total = plan.total
    if timed_out:
        return Result(0, total, "timeout")
    try:
        outer = json.loads(answer) if answer else None
        exit_code = outer["exit"]
        report = json.loads(outer["report"]) if outer["report"] else None
    except (ValueError, TypeError, KeyError):
        return Result(0, total, "no_result")
    if exit_code == -signal.SIGXCPU:
        return Result(0, total, "timeout")  # the CPU-seconds backstop fired
    if exit_code != 0:
        return Result(0, total, "killed")
    if not isinstance(report, dict):
        return Result(0, total, "no_result")
    return Result(min(test_cases.passed(plan, report), total), total, "ok")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap's --die-with-parent takes the whole sandbox down with it
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
