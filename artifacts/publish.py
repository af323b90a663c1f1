"""Publishing a folder as a committed artifact: every file first, ``MANIFEST.json`` last."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artifacts.errors import ArtifactError
from artifacts.manifest import (
    MANIFEST_NAME,
    PARTS_DIR,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    is_listed_name,
)
from artifacts.progress import byte_progress
from artifacts.signing import load_private_key, sign
from artifacts.store import open_store
from artifacts.store_api import Store, join_key

log = logging.getLogger(__name__)

#: Files uploaded at once. Large files are also split into concurrent parts by boto3.
FILE_CONCURRENCY = 4


def local_files(src: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Relative POSIX paths of the files under ``src`` that belong in a manifest, sorted."""
    src = Path(src)
    if not src.is_dir():
        raise ArtifactError(f"{src}: not a directory")
    skip = set(exclude)
    out = []
    for dirpath, dirs, files in os.walk(src):
        dirs.sort()
        for name in files:
            rel = (Path(dirpath) / name).relative_to(src).as_posix()
            if (
                is_listed_name(rel)
                and rel not in skip
                and not any(rel.startswith(e.rstrip("/") + "/") for e in skip)
            ):
                out.append(rel)
    return sorted(out)


def upload_files(
    store: Store, src: Path, files: list[str], *, progress: bool = False
) -> list[FileEntry]:
    """Upload ``files`` (relative to ``src``) concurrently; entries carry the streamed hashes."""
    total = sum((src / f).stat().st_size for f in files)
    with byte_progress(total, f"upload → {store.uri}", enabled=progress) as advance:
        with ThreadPoolExecutor(max_workers=FILE_CONCURRENCY) as pool:
            entries = list(
                pool.map(lambda rel: store.upload_file(src / rel, rel, progress=advance), files)
            )
    return entries


def _commit(store: Store, manifest: Manifest, signing_key: Path | None) -> None:
    data = manifest.to_json()
    if signing_key is not None:
        store.put_bytes(SIGNATURE_NAME, sign(data, signing_key))
    store.put_bytes(MANIFEST_NAME, data)  # the commit point


def publish_dir(
    src: Path,
    dest_uri: str,
    *,
    metadata: dict[str, Any] | None = None,
    signing_key: Path | None = None,
    progress: bool = False,
    exclude: Iterable[str] = (),
    overwrite: bool = False,
) -> Manifest:
    """Upload every file of ``src`` to ``dest_uri``, then commit it with a manifest (and signature).

    A destination that already holds a committed artifact is refused unless ``overwrite``; then
    its manifest is removed first, so no reader ever sees a manifest over half-replaced files.
    """
    src = Path(src)
    files = local_files(src, exclude)
    if signing_key is not None:
        load_private_key(signing_key)  # fail before uploading gigabytes
    store = open_store(dest_uri)
    if store.exists(MANIFEST_NAME):
        if not overwrite:
            raise ArtifactError(
                f"{store.uri} already holds a committed artifact: publish to a new prefix (or remove it first)"
            )
        store.delete([MANIFEST_NAME, SIGNATURE_NAME])
    started = time.monotonic()
    entries = upload_files(store, src, files, progress=progress)
    manifest = Manifest(files=entries, metadata=dict(metadata or {}))
    _commit(store, manifest, signing_key)
    log.info(
        "published %d files (%.1f MB) to %s in %.1fs%s",
        len(entries),
        manifest.total_bytes / 1e6,
        store.uri,
        time.monotonic() - started,
        " (signed)" if signing_key else "",
    )
    return manifest


def publish_part(
    src: Path,
    dest_uri: str,
    part: str,
    *,
    files: Iterable[str] | None = None,
    progress: bool = False,
) -> list[FileEntry]:
    """One node's share of a multi-node artifact: its files, then ``_parts/<part>.json``.

    The part record is the node's promise that its uploads finished; :func:`commit_parts` only
    writes the manifest once every node's record is there.
    """
    src = Path(src)
    names = sorted(files) if files is not None else local_files(src)
    store = open_store(dest_uri)
    entries = upload_files(store, src, names, progress=progress)
    write_part(dest_uri, part, entries)
    return entries


def write_part(dest_uri: str, part: str, entries: Iterable[FileEntry]) -> None:
    """``_parts/<part>.json``: the node's record that every file it lists is uploaded.

    Separate from the uploads so that a node whose files move in several processes writes one
    record, after the last of them finished (and none if any failed).
    """
    open_store(dest_uri).put_bytes(
        join_key(PARTS_DIR, f"{part}.json"), json.dumps([e.to_dict() for e in entries]).encode()
    )


class MissingPartsError(ArtifactError):
    """Another node's part never arrived (the node died or cannot upload): not store weather."""


def commit_parts(
    dest_uri: str,
    parts: list[str],
    *,
    metadata: dict[str, Any] | None = None,
    signing_key: Path | None = None,
    timeout: float = 600.0,
    poll: float = 1.0,
) -> Manifest:
    """Wait for every part record, merge them and write the manifest (the commit)."""
    store = open_store(dest_uri)
    deadline = time.monotonic() + timeout
    delay = poll
    while True:
        missing = [p for p in parts if not store.exists(join_key(PARTS_DIR, f"{p}.json"))]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise MissingPartsError(
                f"{store.uri}: timed out after {timeout:.0f}s waiting for parts {', '.join(missing)}; not committed"
            )
        # Polling is the only way to learn about another node's upload through S3.
        time.sleep(delay)
        delay = min(delay * 1.5, 10.0)
    merged: dict[str, FileEntry] = {}
    for p in parts:
        for raw in json.loads(store.get_bytes(join_key(PARTS_DIR, f"{p}.json"))):
            entry = FileEntry(raw["path"], int(raw["size"]), raw["sha256"])
            prev = merged.get(entry.path)
            if prev is not None and prev != entry:
                raise ArtifactError(
                    f"{store.uri}: {entry.path} uploaded by two nodes with different content; not committed"
                )
            merged[entry.path] = entry
    manifest = Manifest(files=list(merged.values()), metadata=dict(metadata or {}))
    _commit(store, manifest, signing_key)
    store.delete([join_key(PARTS_DIR, f"{p}.json") for p in parts])
    return manifest
