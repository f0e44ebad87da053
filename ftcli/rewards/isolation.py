"""The OS-level isolation of `code_tests`: a bubblewrap (`bwrap`) command line, and the check that it works.

Generated code runs as an unprivileged uid in new user, pid, network (no interfaces), ipc and uts
namespaces, with an empty environment, a private tmpfs as /tmp, read-only /usr and the
interpreter's standard library, and nothing else of the machine: no run directory, no home, no
/etc. `--die-with-parent` ties the sandbox to the trainer.

Run as root (our CI, most GPU boxes), bwrap would map the sandbox uid onto root (kernel uid 0,
exempt from the process limit), so there bwrap keeps the mount, pid, net, ipc and uts namespaces
and `setpriv` drops to uid 65534 (nobody) with no capabilities before `unshare --user` opens the
user namespace. Run as a normal user, bwrap makes the user namespace itself.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig

from ftcli.errors import BadInput

INSTALL = "apt-get install bubblewrap"
NOBODY = 65534
# Always visible read-only: system libraries and tools, never secrets. /etc is left out on purpose.
SYSTEM_DIRS = ("/usr",)
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
TMP_BYTES = 64 * 1024 * 1024  # the private /tmp is memory: keep it small


class SandboxUnavailable(BadInput):
    """code_tests cannot run here: no bwrap, or bwrap cannot create namespaces."""


def interpreter() -> str:
    """The real interpreter behind sys.executable (a venv's python is a link to it)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = os.path.join(sys.base_prefix, "bin", version)
    return candidate if os.access(candidate, os.X_OK) else os.path.realpath(sys.executable)


def interpreter_paths() -> list[str]:
    """What the interpreter needs to start with `-I -S`: itself and its lib folder (standard library,
    libpython, and the libraries its extension modules link, as conda keeps them there)."""
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR") or stdlib)
    paths = [interpreter(), libdir]
    if not stdlib.startswith(libdir + "/"):
        paths.append(stdlib)
    return [p for p in dict.fromkeys(os.path.realpath(p) for p in paths) if not _under_system_dirs(p)]


def _under_system_dirs(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


def _parents(path: str) -> list[str]:
    parts, out = path.strip("/").split("/")[:-1], []
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[:i + 1]))
    return out


def _mounts() -> list[str]:
    args = []
    for d in SYSTEM_DIRS:
        args += ["--ro-bind", d, d]
    for link in MERGED_USR_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    made = set()
    for path in interpreter_paths():
        # bwrap makes missing parents 0700, which the sandbox user could not cross.
        for parent in _parents(path):
            if parent not in made and not _under_system_dirs(parent) and parent not in MERGED_USR_LINKS:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
    site = os.path.join(os.path.realpath(sysconfig.get_paths()["stdlib"]), "site-packages")
    if os.path.isdir(site) and not _under_system_dirs(site):
        args += ["--tmpfs", site]  # the standard library only, not the installed packages
    return args + ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--perms", "1777", "--tmpfs", "/tmp",
                   "--chdir", "/tmp"]


def command(python_args: list[str], bwrap: str | None = None) -> list[str]:
    """argv that runs `interpreter() python_args...` inside the sandbox."""
    bwrap = bwrap or shutil.which("bwrap") or "bwrap"
    common = ["--die-with-parent", "--new-session", "--clearenv", "--unsetenv", "PWD", "--hostname", "sandbox"]
    python = [interpreter(), *python_args]
    if os.geteuid() != 0:
        return [bwrap, "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY), *common, *_mounts(), *python]
    drop = ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs",
            "/usr/bin/unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "--"]
    return [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", *common, *_mounts(), *drop, *python]


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when the sandbox starts here, else why not (checked once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed"
    if os.geteuid() == 0:
        missing = [tool for tool in ("/usr/bin/setpriv", "/usr/bin/unshare") if not os.access(tool, os.X_OK)]
        if missing:
            return f"{', '.join(missing)} not found (package util-linux)"
    argv = command(["-I", "-S", "-B", "-c", "import os; assert os.getuid() == 65534; print('ok')"], bwrap)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                              env={})
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap did not start: {err}"
    if done.returncode != 0 or done.stdout.strip() != "ok":
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"bwrap cannot create the sandbox here: {detail}"
    return None


def require(where: str = "code_tests") -> None:
    """Raise SandboxUnavailable (exit 2) unless generated code can be isolated on this machine."""
    problem = probe()
    if problem is not None:
        raise SandboxUnavailable(
            f"{where}: the code_tests reward runs generated code only inside a bubblewrap sandbox, and {problem}",
            hint=f"install it with `{INSTALL}` (Debian/Ubuntu; `dnf install bubblewrap` on Fedora); in a container, "
                 "allow user namespaces (e.g. docker run --security-opt seccomp=unconfined). ftcli never runs "
                 "generated code outside the sandbox.")
