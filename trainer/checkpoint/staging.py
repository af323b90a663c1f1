"""The upload's own copy of a checkpoint folder: hard links beside it, made at submit.

Why: the Trainer deletes old ``checkpoint-*`` folders (``save_total_limit``) while an upload may
still read them; links keep the bytes alive until the upload is done, and cost no copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

STAGING_DIR = ".commit-staging"


def snapshot(local_dir: Path, dest: Path) -> None:
    """Hard-link copy of ``local_dir`` at ``dest`` (byte copy where links are not possible)."""
    if dest.exists():
        shutil.rmtree(dest)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(local_dir, dest, copy_function=link_or_copy)


def stage(local_dir: Path) -> Path:
    """Snapshot ``local_dir`` into ``<its parent>/.commit-staging/<its name>``; that path."""
    staged = local_dir.parent / STAGING_DIR / local_dir.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    snapshot(local_dir, staged)
    return staged


def unstage(staged: Path | None) -> None:
    """Remove a staged copy once its upload is over (done, failed or skipped)."""
    if staged is not None:
        shutil.rmtree(staged, ignore_errors=True)
