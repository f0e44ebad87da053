"""How a run ends, recorded in its manifest (`done`, `failed: ...` or `interrupted`, never left at `running`),
and runtime failures said in words: a full disk names the folder and the space left."""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path

from ftcli.errors import FtcliError, TrainingFailed
from ftcli.runner import replace
from ftcli.runner.rundir import Manifest

GiB = 1024**3


def free_space(folder: Path) -> str:
    """Free space on the file system holding `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / GiB:.2f} GiB" if free >= GiB / 100 else f"{free / 1024**2:.1f} MiB"


def as_failure(err: BaseException, run_dir: Path) -> TrainingFailed | None:
    """A runtime failure the user can act on, or None for a bug (kept with its traceback)."""
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in str(err)
    if full:
        return TrainingFailed(f"the disk is full: no space left on the device holding {run_dir} "
                              f"({free_space(run_dir)} free)",
                              hint="free some space (old runs under runs/, checkpoints), or set output_dir on "
                                   "another disk; train.save_total_limit keeps fewer checkpoints. Complete "
                                   "checkpoints are kept: `ftcli train RECIPE --resume` continues from the newest")
    if isinstance(err, OSError) and err.strerror:
        where = err.filename or run_dir
        return TrainingFailed(f"could not write or read {where}: {err.strerror}")
    return None


@contextlib.contextmanager
def recorded(manifest: Manifest, run_dir: Path, owns_run_dir: bool):
    """Record the end of the block in the manifest. A run that stops before it trained gives back the run an
    --overwrite replaced (`owns_run_dir`: this process created the run dir)."""
    try:
        yield
    except KeyboardInterrupt:
        _end(manifest, "interrupted", run_dir, owns_run_dir)
        raise
    except FtcliError as err:
        _end(manifest, f"failed: {err.message}", run_dir, owns_run_dir)
        raise
    except Exception as err:
        failure = as_failure(err, run_dir)
        _end(manifest, f"failed: {failure.message if failure else f'{type(err).__name__}: {err}'}", run_dir,
             owns_run_dir)
        if failure is not None:
            raise failure from None
        raise


def _end(manifest: Manifest, status: str, run_dir: Path, owns_run_dir: bool) -> None:
    if manifest.facts.get("status") == "running":  # keep a more precise cause recorded where it happened
        manifest.set_status(status)
    if owns_run_dir:
        replace.restore(run_dir)
