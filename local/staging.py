"""The export's staging folder: made, held, swept when a killed run left it, published.

An export is built in a hidden sibling of ``--out`` (``.<out>.partial-XXXX``) and published by one
rename. A normal failure removes the folder (``finally``), but a SIGKILL or the OOM killer cannot
run a ``finally``: the folder stays, with unaudited adapter weights in it. So the folder is held
with an ``flock`` for as long as its run lives (the kernel drops the lock when the process dies,
however it dies), and :func:`sweep_stale` — called at the start of every run for that ``--out``
— removes each staging folder nobody holds.

A sandboxed run cannot write ``--out``'s parent folder (only its staging folder and work area are
writable in there), so the parent process makes and holds the folder, the child fills and seals
it, and the parent publishes it with :func:`publish` after the child succeeded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from local.errors import LocalError

log = logging.getLogger(__name__)


def _prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _try_hold(folder: Path) -> int | None:
    """An fd holding ``folder``'s lock, or ``None`` when a live run holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep_stale(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` that no live run holds (a killed run's); returns
    what it removed, each named in a warning."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for folder in sorted(out.parent.glob(_prefix(out) + "*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        fd = _try_hold(folder)
        if fd is None:
            continue
        try:
            shutil.rmtree(folder)
        finally:
            os.close(fd)
        log.warning("removed %s, the unpublished export of a run that was killed", folder)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def staging_dir(out: Path, given: Path | None = None) -> Iterator[Path]:
    """A hidden, locked sibling of ``out`` to build the export in; removed unless it was
    published. ``given`` is a folder the parent process made and holds (sandboxed runs): it is
    used as it is and left to the parent."""
    out = Path(out)
    if given is not None:
        yield Path(given)
        return
    if out.exists():
        raise LocalError(
            f"{out} already exists; choose a new --out (an export is never overwritten)"
        )
    if not out.parent.is_dir():
        raise LocalError(f"{out.parent}: folder for --out does not exist")
    staging = Path(tempfile.mkdtemp(prefix=_prefix(out), dir=out.parent))
    fd = _try_hold(staging)
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def publish(staging: Path, out: Path) -> None:
    """The one rename that makes a sealed export visible at ``out`` (and its folder synced)."""
    if out.exists():
        raise LocalError(
            f"{out} appeared while exporting; nothing was exported (staged copy removed)"
        )
    os.rename(staging, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
