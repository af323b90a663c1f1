"""Keeping the store tidy: the newest K committed artifacts, and no stale half-uploads."""

from __future__ import annotations

import logging
import time

from artifacts.manifest import MANIFEST_NAME, SIGNATURE_NAME, committed_folders, incomplete_folders
from artifacts.store import open_store

log = logging.getLogger(__name__)


def prune_committed(store_uri: str, keep: int, prefix: str = "") -> list[str]:
    """Delete all but the newest ``keep`` committed folders under ``prefix``; returns the deleted.

    The manifest goes first, so a folder being deleted is never mistaken for a committed one.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    store = open_store(store_uri)
    old = committed_folders(store.list(prefix), prefix)[:-keep]
    for folder in old:
        store.delete([f"{folder}/{MANIFEST_NAME}", f"{folder}/{SIGNATURE_NAME}"])
        store.delete_prefix(folder)
        log.info("pruned old checkpoint %s/%s", store.uri, folder)
    return old


def cleanup_incomplete(
    store_uri: str, grace_seconds: float, prefix: str = "", now: float | None = None
) -> list[str]:
    """Remove folders without a manifest whose newest object is older than ``grace_seconds``."""
    store = open_store(store_uri)
    stale = incomplete_folders(
        store.list(prefix), prefix, grace_seconds, time.time() if now is None else now
    )
    for folder in stale:
        store.delete_prefix(folder)
        log.info("removed incomplete upload %s/%s", store.uri, folder)
    return stale
