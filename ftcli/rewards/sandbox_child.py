"""What runs inside the sandbox: the supervisor, the worker that executes the completion, the value codec.

This file is sent as source to `python -I -S -B -c` inside bubblewrap; it imports only the standard
library. The supervisor reads the job from stdin, sets the limits, clears the environment, moves the
result pipe to a random fd number and forks a worker. The worker closes the result pipe *before*
any generated code runs, executes the program and the test calls, and reports to the supervisor on
a private pipe; the supervisor adds the worker's exit status and writes one JSON document to the
result pipe. The expected answers are not in the job: for `assert f(x) == y` the worker only
returns the value of `f(x)`, encoded by `encode`, and the trainer compares it with `y` outside.

The trainer imports `decode` from here (the one definition of the codec format).
"""

import io
import json
import os
import random
import resource
import select
import sys

LIMITS = (("RLIMIT_AS", "memory"), ("RLIMIT_CPU", "cpu"), ("RLIMIT_FSIZE", "file_size"),
          ("RLIMIT_NPROC", "processes"), ("RLIMIT_NOFILE", "open_files"), ("RLIMIT_CORE", "core"))


class Unsupported(Exception):
    """A value that is not plain data (a custom object could claim to equal anything)."""


def encode(value, depth=0):
    """Plain Python data -> JSON, keeping the types that `==` tells apart (tuple vs list, set, bytes)."""
    if depth > 100:
        raise Unsupported("nested too deep")
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)  # a plain str, whatever the subclass
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, complex):
        return {"complex": [float(value.real), float(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytearray" if isinstance(value, bytearray) else "bytes": bytes(value).hex()}
    for kind in (list, tuple, set, frozenset):
        if isinstance(value, kind):
            return {kind.__name__: [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    raise Unsupported(type(value).__name__)


def decode(data):
    """The inverse of `encode`, building only built-in types; raises ValueError on anything else."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError(f"not an encoded value: {type(data).__name__}")
    [(kind, body)] = data.items()
    if kind == "float":
        return float(body)
    if kind == "complex":
        return complex(float(body[0]), float(body[1]))
    if kind in ("bytes", "bytearray"):
        return (bytes if kind == "bytes" else bytearray).fromhex(body)
    builders = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
    if kind in builders and isinstance(body, list):
        return builders[kind](decode(v) for v in body)
    if kind == "dict" and isinstance(body, list):
        return {decode(k): decode(v) for k, v in body}
    raise ValueError(f"not an encoded value: {kind!r}")


class CappedText(io.StringIO):
    """stdout of an io case: stops the program once it has printed more than the limit."""

    def __init__(self, limit):
        super().__init__()
        self.left = limit

    def write(self, text):
        self.left -= len(text)
        if self.left < 0:
            raise RuntimeError("sandbox: output limit exceeded")
        return super().write(text)


def run_asserts(program, cases, cap):
    """Run the program once, then each case in its namespace: values for split asserts, verdicts for the rest."""
    ns = {"__name__": "__main__"}
    try:
        exec(program, ns)
    except BaseException:
        return None
    out = []
    for case in cases:
        try:
            if "values" in case:
                values = [encode(eval(compile(src, "<test>", "eval"), ns)) for src in case["values"]]
                text = json.dumps(values)
                out.append({"values": values} if len(text) <= cap else {"error": "value too large"})
            else:
                exec(compile(case["check"], "<test>", "exec"), ns)
                out.append({"passed": True})
        except BaseException as err:
            out.append({"error": type(err).__name__})
    return out


def run_io(program, inputs, cap):
    """Run the program once per stdin; return what it printed (compared with the expected output outside)."""
    out, real_stdout = [], sys.stdout
    for text in inputs:
        capture = CappedText(cap)
        sys.stdin, sys.stdout = io.StringIO(text), capture
        try:
            exec(program, {"__name__": "__main__"})
            ok = True
        except SystemExit as stop:
            ok = stop.code in (None, 0)
        except BaseException:
            ok = False
        finally:
            sys.stdout, sys.stdin = real_stdout, io.StringIO("")
        out.append({"ok": ok, "stdout": capture.getvalue() if ok else ""})
    return out


def worker(job, report_fd):
    cap = job["cap"]
    report = {"compiled": False, "asserts": None, "io": []}
    try:
        program = compile(job["code"], "<completion>", "exec")
        report["compiled"] = True
    except BaseException:
        program = None
    if program is not None:
        if job["asserts"]:
            report["asserts"] = run_asserts(program, job["asserts"], cap)
        report["io"] = run_io(program, job["io"], cap)
    data = json.dumps(report).encode("utf-8")
    with os.fdopen(report_fd, "wb") as pipe:
        pipe.write(data)
    os._exit(0)


def collect_report(fd, pid, cap):
    """The worker's report, read until the worker exits (its forks may keep the pipe open); (bytes, exit code)."""
    os.set_blocking(fd, False)
    chunks, size, status = [], 0, None
    while size <= cap:
        if status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(raw) if done else None
        if status is None:
            select.select([fd], [], [], 0.05)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
        elif status is not None:
            break  # the worker is gone and the pipe is drained (or at EOF)
    os.close(fd)
    if status is None:  # over the cap: stop the worker
        os.kill(pid, 9)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return b"".join(chunks)[:cap + 1], status


def set_limits(limits):
    for name, key in LIMITS:
        soft = limits[key]
        hard = soft + 1 if name == "RLIMIT_CPU" else soft  # the soft CPU limit sends SIGXCPU, the hard one SIGKILL
        resource.setrlimit(getattr(resource, name), (soft, hard))


def supervise():
    job = json.loads(sys.stdin.buffer.read())
    channel = os.dup2(job["channel"], random.randrange(100, 1000))  # a per-run number, unknown to the code
    os.close(job["channel"])
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.environ.clear()  # nothing of the launcher's environment (PWD, LC_CTYPE) reaches the code
    set_limits(job["limits"])
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(channel)  # closed before generated code runs: only the supervisor can answer the trainer
        os.close(report_r)
        sys.stdout, sys.stderr = CappedText(job["cap"]), CappedText(job["cap"])  # a print flood fails the program
        worker(job, report_w)
    os.close(report_w)
    report, exit_code = collect_report(report_r, pid, job["report_cap"])
    answer = {"exit": exit_code, "report": report.decode("utf-8", "replace")}
    with os.fdopen(channel, "wb") as pipe:
        pipe.write(json.dumps(answer).encode("utf-8"))


if __name__ == "__main__":
    supervise()
