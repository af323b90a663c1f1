"""Verified download: temp sibling → verify every byte → atomic rename. DEST is never half-written."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    check_listing,
    is_listed_name,
)
from artifacts.progress import byte_progress
from artifacts.signing import load_public_key, verify_signature
from artifacts.store import open_store
from artifacts.verify import check_file

log = logging.getLogger(__name__)

FILE_CONCURRENCY = 4


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def download_verified(
    src_uri: str,
    dest: Path,
    *,
    public_key: Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> Manifest:
    """Download the committed artifact at ``src_uri`` into ``dest``, verified.

    Every check that needs no data (manifest present, signature, no unlisted or missing files)
    runs before the first byte is fetched; sizes and SHA-256 are checked as the bytes stream.
    Only a fully verified copy is renamed into place; any failure leaves ``dest`` as it was.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"{dest}: exists and is not a directory")
    if _is_nonempty_dir(dest) and not force:
        raise ArtifactError(
            f"{dest}: exists and is not empty; pass --force to replace it (only after the new copy verifies)"
        )
    if public_key is not None:
        load_public_key(public_key)
    started = time.monotonic()

    store = open_store(src_uri)
    try:
        manifest_bytes = store.get_bytes(MANIFEST_NAME)
    except ArtifactError:
        raise VerificationError(
            f"{store.uri}/{MANIFEST_NAME}: missing — the artifact is incomplete or not committed"
        ) from None
    sig = None
    if public_key is not None:
        try:
            sig = store.get_bytes(SIGNATURE_NAME)
        except ArtifactError:
            raise VerificationError(
                f"{store.uri}/{SIGNATURE_NAME}: signature missing but --public-key was given"
            ) from None
        verify_signature(manifest_bytes, sig, public_key, what=f"{store.uri}/{MANIFEST_NAME}")
    manifest = Manifest.from_json(manifest_bytes, source=f"{store.uri}/{MANIFEST_NAME}")
    remote = {o.key: o.size for o in store.list() if is_listed_name(o.key)}
    check_listing(manifest, remote, store.uri)

    # Parents we create are removed again on failure: nothing is left behind.
    created: list[Path] = []
    parent = dest.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for d in reversed(list(created)):
            try:
                d.mkdir()
            except FileExistsError:  # another process (a rank on this node) made it first:
                created.remove(d)  # not ours to remove on failure
        tmp.mkdir()

        def fetch(entry) -> None:
            got = store.download_file(entry.path, tmp / entry.path, progress=advance)
            check_file(tmp / entry.path, entry, size=got.size, sha256=got.sha256)

        with byte_progress(
            manifest.total_bytes, f"download {store.uri}", enabled=progress
        ) as advance:
            with ThreadPoolExecutor(max_workers=FILE_CONCURRENCY) as pool:
                list(pool.map(fetch, manifest.files))
        (tmp / MANIFEST_NAME).write_bytes(manifest_bytes)
        if sig is not None:
            (tmp / SIGNATURE_NAME).write_bytes(sig)
        elif store.exists(SIGNATURE_NAME):
            (tmp / SIGNATURE_NAME).write_bytes(store.get_bytes(SIGNATURE_NAME))
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    log.info(
        "verified %d files (%.1f MB) from %s into %s in %.1fs%s",
        len(manifest.files),
        manifest.total_bytes / 1e6,
        store.uri,
        dest,
        time.monotonic() - started,
        " (signature ok)" if public_key else "",
    )
    return manifest


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the verified copy to ``dest``; an old ``dest`` is moved aside first, then removed."""
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)
