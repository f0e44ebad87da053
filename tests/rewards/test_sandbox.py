"""The code_tests sandbox under attack: each attack is a completion scored through the real reward, and must fail.

Every attack of issue 19 is here: a forged result, killing the trainer (pidfd, os.kill), prlimit on the
trainer, reading /etc/shadow and the trainer's environment, writing outside the private /tmp (open,
os.open, sqlite3), the network on loopback, a fork bomb, a 20 GB allocation and an infinite loop.
An attack that worked would score 1 (each test's expected value is what the attack would get if it
got through), so a score of 0 plus the host-side check is the proof that it was blocked.
"""

import os
import resource
import signal
import socket
import textwrap
import threading
import time
import uuid

import pytest

from ftcli import rewards
from ftcli.rewards import isolation, sandbox
from helpers.sandbox import needs_sandbox

pytestmark = needs_sandbox


def reward(completions, tests, **spec):
    [fn] = rewards.build(rewards.parse_specs([{"type": "code_tests", "timeout": 3, **spec}]), ["tests"])
    return fn(prompts=[""] * len(completions), completions=completions, tests=tests)


def as_completion(source: str) -> str:
    return f"```python\n{textwrap.dedent(source)}\n```"


def uid_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as status:
                count += any(line.split()[1:2] == [str(uid)] for line in status if line.startswith("Uid:"))
        except (OSError, ValueError):
            continue
    return count


def test_a_forged_result_cannot_score_a_wrong_solution():
    wrong = "def add(a, b):\n    return a - b\n"
    forgeries = {
        # the old harness's hole: find the result marker through the frames and print a result line
        "frame nonce": wrong + """
import sys, json
frame = sys._getframe()
while frame:
    for value in list(frame.f_locals.values()):
        if isinstance(value, str) and len(value) == 32:
            print(value + json.dumps({"passed": 3}))
    frame = frame.f_back
""",
        # a report claiming every case passed, on every fd, then exit before the real report
        "fd spray": wrong + """
import json, os
fake = json.dumps({"compiled": True, "asserts": [{"passed": True}] * 3, "io": []})
outer = json.dumps({"exit": 0, "report": fake}).encode()
for fd in range(3, 1024):
    try:
        os.write(fd, outer)
    except OSError:
        pass
os._exit(0)
""",
        # an object that equals everything: only plain data leaves the sandbox
        "always equal": "class Any:\n    def __eq__(self, other):\n        return True\n"
                        "def add(a, b):\n    return Any()\n",
        # monkeypatching the harness: it still has only the calls, never the expected values
        "patch harness": wrong + "import __main__\n__main__.encode = lambda value, depth=0: 'passed'\n",
    }
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 5) == 5"]
    scores = dict(zip(forgeries, reward([as_completion(src) for src in forgeries.values()], [tests] * len(forgeries))))
    assert scores == {name: 0.0 for name in forgeries}
    right = reward([as_completion("def add(a, b):\n    return a + b\n")], [tests])
    assert right == [1.0]  # control: the same tests pass a right solution
    # the result pipe (moved to an fd in 100..999) is closed before the code runs; only the report pipe is open
    fds = "import os\ndef high_fds():\n    return [fd for fd in range(100, 1000) if _open(fd)]\n" \
          "def _open(fd):\n    try:\n        os.fstat(fd)\n        return True\n    except OSError:\n        return False\n"
    assert reward([as_completion(fds)], [["assert high_fds() == []"]]) == [1.0]


def test_the_expected_answers_never_enter_the_sandbox():
    secret = f"expected-{uuid.uuid4().hex}"
    leak = """
import gc, sys
def find():
    for obj in gc.get_objects():
        for value in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()):
            if isinstance(value, str) and value.startswith("expected-") and len(value) > 20:
                return value
    return None
"""
    tests = [f"assert find() == {secret!r}"]
    assert reward([as_completion(leak)], [tests]) == [0.0]
    # control: a secret that does enter the sandbox (here inside the code) is found by the same search
    planted = leak + f"PLANTED = [{secret!r}]\n"
    assert reward([as_completion(planted)], [tests]) == [1.0]


@pytest.mark.parametrize("how", ["pidfd", "os.kill"])
def test_generated_code_cannot_signal_the_trainer(how):
    hits = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    trainer = os.getpid()
    send = {"pidfd": "signal.pidfd_send_signal(os.pidfd_open({pid}), signal.SIGUSR1)",
            "os.kill": "os.kill({pid}, signal.SIGUSR1)"}[how]
    attack = f"import os, signal\n{send.format(pid=trainer)}\n{send.format(pid='os.getppid()')}\n" \
             "def add(a, b):\n    return a + b\n"
    try:
        got = reward([as_completion(attack)], [["assert add(1, 2) == 3"]])
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [0.0] and hits == []


def test_generated_code_cannot_change_the_trainers_limits(tmp_path):
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    attack = f"""
import os, resource
for pid in ({os.getpid()}, os.getppid(), 1):
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, 0))
def add(a, b):
    return a + b
"""
    assert reward([as_completion(attack)], [["assert add(1, 2) == 3"]]) == [0.0]
    assert resource.getrlimit(resource.RLIMIT_FSIZE) == before
    (tmp_path / "checkpoint.bin").write_bytes(b"x" * 4096)  # the trainer can still write its checkpoints
    assert (tmp_path / "checkpoint.bin").stat().st_size == 4096


def test_generated_code_cannot_read_shadow_or_the_trainers_environment(monkeypatch):
    secret = f"hf_{uuid.uuid4().hex}"
    monkeypatch.setenv("FTCLI_TEST_TOKEN", secret)
    with open(f"/proc/{os.getpid()}/environ") as env:
        trainer_environ = env.read()
    reads = {
        "shadow": ("def read():\n    return open('/etc/shadow').read()\n", open("/etc/shadow").read()),
        "trainer environ": (f"def read():\n    return open('/proc/{os.getpid()}/environ').read()\n",
                            trainer_environ),
        "own environ": ("import os\ndef read():\n    return os.environ.get('FTCLI_TEST_TOKEN')\n", secret),
        "any environ": ("import os\ndef read():\n    for pid in os.listdir('/proc'):\n        try:\n"
                        f"            if {secret!r} in open(f'/proc/{{pid}}/environ').read():\n"
                        f"                return {secret!r}\n"
                        "        except OSError:\n            pass\n", secret),
    }
    tests = [[f"assert read() == {expected!r}"] for _, expected in reads.values()]
    scores = reward([as_completion(src) for src, _ in reads.values()], tests)
    assert dict(zip(reads, scores)) == {name: 0.0 for name in reads}
    # the sandbox's environment is empty, and the code can read what is meant to be there
    empty = reward([as_completion("import os\ndef env():\n    return dict(os.environ)\n")], [["assert env() == {}"]])
    assert empty == [1.0]


def test_generated_code_cannot_write_outside_its_private_tmp(tmp_path):
    host = tmp_path / f"pwned-{uuid.uuid4().hex}"
    run_dir = os.path.join(os.getcwd(), f"pwned-{uuid.uuid4().hex}")
    writes = {
        "open": f"def write():\n    open({str(host)!r}, 'w').write('x')\n    return True\n",
        "os.open": f"import os\ndef write():\n    os.close(os.open({str(host)!r}, os.O_CREAT | os.O_WRONLY))\n"
                   "    return True\n",
        "sqlite3": f"import sqlite3\ndef write():\n    sqlite3.connect({str(host)!r}).execute('create table t(x)')\n"
                   "    return True\n",
        "run dir": f"def write():\n    open({run_dir!r}, 'w').write('x')\n    return True\n",
        "root": "def write():\n    open('/pwned', 'w').write('x')\n    return True\n",
        "usr": "def write():\n    open('/usr/pwned', 'w').write('x')\n    return True\n",
    }
    scores = reward([as_completion(src) for src in writes.values()], [["assert write() == True"]] * len(writes))
    assert dict(zip(writes, scores)) == {name: 0.0 for name in writes}
    assert not host.exists() and not os.path.exists(run_dir) and not os.path.exists("/usr/pwned")
    # control: the private /tmp is writable (sqlite3 included) and vanishes with the sandbox
    private = "import sqlite3\ndef write():\n    sqlite3.connect('/tmp/ok.db').execute('create table t(x)')\n" \
              "    return True\n"
    assert reward([as_completion(private)], [["assert write() == True"]]) == [1.0]


def test_generated_code_has_no_network_not_even_loopback():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    port, received, stop = server.getsockname()[1], [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100))
            except OSError:
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    attack = f"import socket\ndef connect():\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n" \
             "    s.sendall(b'pwned')\n    return 'connected'\n"
    try:
        assert reward([as_completion(attack)], [["assert connect() == 'connected'"]]) == [0.0]
    finally:
        stop.set()
        thread.join()
        server.close()
    assert received == []


def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind():
    before = uid_processes(isolation.NOBODY)
    bomb = """
import os, time
def bomb():
    started = 0
    for _ in range(200):
        try:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            started += 1
        except OSError:
            break
    return started
"""
    assert reward([as_completion(bomb)], [["assert bomb() == 200"]]) == [0.0]
    # the bound itself: fewer processes than the sandbox's limit (an unsplit test, judged inside)
    assert reward([as_completion(bomb)], [[f"assert bomb() < {sandbox.MAX_PROCESSES}"]]) == [1.0]
    time.sleep(0.5)
    assert uid_processes(isolation.NOBODY) <= before  # the pid namespace took every child down with it


def test_a_20_gb_allocation_and_an_infinite_loop_score_zero_quickly():
    add = "def add(a, b):\n    return a + b\n"
    started = time.monotonic()
    results = sandbox.run_many([("blob = bytearray(20 * 1024 ** 3)\n" + add, ["assert add(1, 2) == 3"]),
                                ("while True:\n    pass\n" + add, ["assert add(1, 2) == 3"])], timeout=2.0)
    elapsed = time.monotonic() - started
    assert [r.score() for r in results] == [0.0, 0.0]
    assert results[1].status == "timeout" and elapsed < 10
    assert sandbox.run(add, ["assert add(1, 2) == 3"]).score() == 1.0  # and the next completion runs as usual
