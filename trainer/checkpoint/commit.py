"""One checkpoint's commit from one node: its part, and on the head the manifest once all are in.

For global step S, destination ``<run>/checkpoints/step-S/``:

1. this node's files go to the destination through its upload processes, one per local rank
   (each rank's shards in their own process, :func:`trainer.checkpoint.uploaders.assign_uploads`,
   each file hashed while it streams), or in the calling thread; once every one of them has
   finished, ``_parts/node-<rank>.json`` lists them all (:func:`artifacts.publish.write_part`).
   If an uploader dies, no part record is written;
2. the head (node 0) waits for every node's part record and only then writes ``MANIFEST.json``
   (:func:`artifacts.publish.commit_parts`): a checkpoint missing one node's shards is never
   committed. Then the retention keeps the newest ``keep_last``.

Why its own module: this is what a commit *is*, the order of writes that keeps a half-uploaded
checkpoint from ever looking committed; :mod:`.committer` decides *when* (the queue, the
background thread, outages retried, uploads superseded or abandoned). It also keeps what each
commit measured: the notice decision and the STATUS report read those numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artifacts.manifest import MANIFEST_NAME, PARTS_DIR
from artifacts.publish import commit_parts, publish_part, write_part
from artifacts.retention import Retention
from artifacts.run import now_iso, step_folder
from artifacts.store import open_store
from artifacts.store_api import join_key
from trainer.checkpoint.upload_pool import UploadPool
from trainer.checkpoint.uploaders import bytes_per_rank

log = logging.getLogger("trainer.checkpoint.committer")  # the committer's log lines, as before


class CommitProtocol:
    """Commits one node's checkpoints of a run (the head writes the manifests); keeps the numbers."""

    def __init__(
        self,
        checkpoints_uri: str,
        *,
        node_rank: int,
        num_nodes: int,
        retention: Retention,
        signing_key: Path | None = None,
        part_timeout: float = 600.0,
    ) -> None:
        self.checkpoints_uri = checkpoints_uri
        self.node_rank, self.num_nodes = node_rank, num_nodes
        self.is_head = node_rank == 0
        self.retention = retention
        self.signing_key = signing_key
        self.part_timeout = part_timeout
        #: step -> seconds from submit to commit (head) or to part uploaded (other nodes)
        self.durations: dict[int, float] = {}
        self.committed_steps: list[int] = []
        #: step -> what the head committed: bytes per rank, submit -> commit seconds, when
        self.commits: dict[int, dict[str, Any]] = {}
        #: step -> {"bytes": this node's bytes, "upload_s": seconds its upload took}
        self.uploads: dict[int, dict[str, Any]] = {}
        #: bytes per second of this node's last upload; None until one finished
        self.throughput_bps: float | None = None

    def commit(
        self,
        staged: Path | None,
        step: int,
        metadata: dict[str, Any],
        submitted: float,
        *,
        pool: UploadPool | None,
        abandoned: Callable[[int], bool],
    ) -> None:
        """Upload this node's part of checkpoint ``step`` (``staged``; None: an empty part), and
        commit it on the head.

        ``submitted``: its ``time.monotonic()`` at submit; ``pool``: the node's upload processes,
        or None to upload in this thread; ``abandoned``: whether a notice's save took the step's
        place (then nothing more is done).
        """
        if abandoned(step):
            return  # a notice's save took its place
        dest = open_store(self.checkpoints_uri).child_uri(step_folder(step))
        store = open_store(dest)
        if store.exists(MANIFEST_NAME):
            log.info("checkpoint %d is already committed at %s; not uploading it again", step, dest)
            return
        part = f"node-{self.node_rank}"
        store.delete([join_key(PARTS_DIR, f"{part}.json")])  # a record left by an earlier attempt
        files = None if staged is not None else []
        upload_started = time.monotonic()
        entries = _publish_part(pool, staged or Path("."), dest, part, files)
        self._record_upload(step, entries, time.monotonic() - upload_started)
        if not self.is_head:
            self.durations[step] = time.monotonic() - submitted
            log.info(
                "checkpoint %d: node %d uploaded %d files in %.1fs",
                step,
                self.node_rank,
                len(entries),
                self.durations[step],
            )
            return
        if abandoned(step):
            log.info("checkpoint %d abandoned after its upload: not committed", step)
            return
        manifest = commit_parts(
            dest,
            [f"node-{i}" for i in range(self.num_nodes)],
            metadata={"global_step": step, **metadata},
            signing_key=self.signing_key,
            timeout=self.part_timeout,
        )
        self.durations[step] = time.monotonic() - submitted
        self.committed_steps.append(step)
        self.commits[step] = {
            "bytes_per_rank": bytes_per_rank(manifest.files),
            "total_bytes": manifest.total_bytes,
            "submit_to_commit_s": round(self.durations[step], 3),
            "committed_at": time.time(),
            "committed_at_iso": now_iso(),
        }
        log.info(
            "checkpoint %d committed to %s (%d files, %.1f MB) %.1fs after the save",
            step,
            dest,
            len(manifest.files),
            manifest.total_bytes / 1e6,
            self.durations[step],
        )
        self.retention.tidy()

    def _record_upload(self, step: int, entries: list[Any], seconds: float) -> None:
        nbytes = sum(int(e.size) for e in entries)
        self.uploads[step] = {"bytes": nbytes, "upload_s": round(seconds, 3)}
        if nbytes and seconds > 0:
            self.throughput_bps = nbytes / seconds


def _publish_part(
    pool: UploadPool | None, src: Path, dest: str, part: str, files: list[str] | None
) -> list[Any]:
    """This node's files and then its part record, through ``pool`` or in this thread."""
    if pool is None:
        return publish_part(src, dest, part, files=files)
    entries = pool.upload(src, dest, files)
    write_part(dest, part, entries)
    return entries
