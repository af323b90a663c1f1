"""Keeping the store tidy: the newest K committed artifacts, and no stale half-uploads."""

from __future__ import annotations

import logging
import time

from artifacts.manifest import MANIFEST_NAME, SIGNATURE_NAME, committed_folders, incomplete_folders
from artifacts.store import open_store

log = logging.getLogger(__name__)


def prune_committed(
    store_uri: str, keep: int, prefix: str = "", *, leftovers: set[str] | None = None
) -> list[str]:
    """Delete all but the newest ``keep`` committed folders under ``prefix``; returns the deleted.

    The manifest goes first, so a folder being deleted is never mistaken for a committed one.
    ``leftovers``: the caller's set of folders known to be garbage — their manifest is gone but
    removing the rest failed (a store error mid-delete). They are retried first, at once (not
    after the hour :func:`cleanup_incomplete` grants an upload that may still be in flight); a
    folder stays in the set until its removal succeeds.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    store = open_store(store_uri)
    known = leftovers if leftovers is not None else set()
    for folder in sorted(known):
        store.delete_prefix(folder)
        known.discard(folder)
        log.info("removed the rest of pruned checkpoint %s/%s", store.uri, folder)
    old = committed_folders(store.list(prefix), prefix)[:-keep]
    for folder in old:
        store.delete([f"{folder}/{MANIFEST_NAME}", f"{folder}/{SIGNATURE_NAME}"])
        known.add(folder)  # from here on it is garbage, whatever happens to the next call
        store.delete_prefix(folder)
        known.discard(folder)
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


class Retention:
    """What a writer of checkpoints keeps tidy after each commit: the newest ``keep_last``,
    no stale half-uploads, and the folders an earlier prune left half-deleted.

    A store error never escapes :meth:`tidy` (the commit before it is done and must not be
    re-run or failed for it); what it left is retried by the next call.
    """

    def __init__(self, store_uri: str, keep_last: int, stale_grace: float) -> None:
        self.store_uri, self.keep_last, self.stale_grace = store_uri, keep_last, stale_grace
        #: pruned folders (manifest gone) whose removal failed: retried until it succeeds
        self.leftovers: set[str] = set()

    def tidy(self) -> None:
        try:
            prune_committed(self.store_uri, self.keep_last, leftovers=self.leftovers)
            self.cleanup(now=None, grace=self.stale_grace)
        except Exception as err:  # noqa: BLE001 - retried; a leftover is never resumed from
            log.warning(
                "pruning old checkpoints failed (%s); retried later: %s",
                ", ".join(sorted(self.leftovers)) or "nothing half-deleted",
                err,
            )

    def cleanup(self, *, now: float | None, grace: float) -> list[str]:
        """:func:`cleanup_incomplete` with this writer's store."""
        removed = cleanup_incomplete(self.store_uri, grace, now=now)
        if removed:
            log.info(
                "removed %d incomplete checkpoint folder(s): %s", len(removed), ", ".join(removed)
            )
        return removed
