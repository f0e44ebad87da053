"""Writing folders so that they are either complete or absent."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp folder beside `final`; rename it into place only if the block finishes.

    A crash leaves a `.tmp-*` folder that nothing mistakes for a complete adapter or model.
    """
    final = Path(final)
    tmp = _temp_beside(final)
    with _discarded_on_error(tmp):
        yield tmp
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def staged_into(final: Path):
    """Yield a temp folder beside `final`; when the block finishes, move each of its entries into `final`
    (created if needed), replacing only entries of the same name. Everything else in `final` is kept, and a
    crash inside the block leaves `final` as it was."""
    final = Path(final)
    tmp = _temp_beside(final)
    with _discarded_on_error(tmp):
        yield tmp
    final.mkdir(exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        replace_entry(entry, final / entry.name)
    tmp.rmdir()


def replace_entry(new: Path, dst: Path) -> None:
    """Rename `new` to `dst`; an existing folder at `dst` is renamed aside first and deleted after."""
    if dst.is_dir() and not dst.is_symlink():
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, aside)
        os.replace(new, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, dst)


def _temp_beside(final: Path) -> Path:
    """A fresh `.NAME.tmp-*` folder in final's parent, so the last rename stays on one filesystem."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


@contextlib.contextmanager
def _discarded_on_error(tmp: Path):
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
