"""Background commit of checkpoints to the run's store prefix (every node's shards, manifest last).

For one checkpoint of global step S, destination ``<run>/checkpoints/step-S/``:

1. every rank has written its part of ``checkpoint-S`` on its node's local disk (barrier);
2. local rank 0 of each node calls :meth:`CheckpointCommitter.submit`: the folder is snapshotted
   with hard links (:mod:`trainer.checkpoint.staging`) and queued; training goes on;
3. the node's background thread runs the commit protocol (:mod:`trainer.checkpoint.commit`):
   this node's part, and on the head the manifest once every node's part is in. The head also
   removes stale incomplete folders.

This module is the *when*: a queue and one background thread per node, so ``submit`` never waits
on the network; store outages retried for a window while training goes on; a failure re-raised in
the training thread. The bytes move in low-priority upload processes
(:mod:`trainer.checkpoint.upload_pool`, which also says how many and how to keep them
in-process). Checkpoints upload one at a time per node, in order. On a single node, a queued
checkpoint whose upload has not started yet is skipped when a newer one is queued behind it
(saves outpacing uploads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from artifacts.retention import Retention
from artifacts.run import Run
from trainer.checkpoint.commit import CommitProtocol
from trainer.checkpoint.inflight import InFlight, folder_bytes
from trainer.checkpoint.outage import StoreOutageError, retry_through_outage
from trainer.checkpoint.staging import stage, unstage
from trainer.checkpoint.upload_pool import (
    CheckpointCommitError,
    UploadPool,
    lower_thread_priority,
    upload_settings,
)

log = logging.getLogger(__name__)

#: An incomplete folder whose newest object is older than this is a dead upload, not a slow one.
STALE_GRACE_SECONDS = 3600.0


class CheckpointCommitter(CommitProtocol):
    """Uploads checkpoints in a background thread; node 0 writes the commit.

    ``submit`` never waits on the network; ``wait`` blocks until everything submitted is
    committed (on other nodes: uploaded) and re-raises a background failure. A failure is also
    raised by the next ``submit``: training must not go on for days with no usable checkpoint.
    The protocol's :meth:`~CommitProtocol.commit` runs in the background thread only; what it
    measured (``durations``, ``commits``, ``uploads``, ``throughput_bps``) is read from any.
    """

    def __init__(
        self,
        run: Run,
        *,
        node_rank: int,
        num_nodes: int,
        keep_last: int,
        signing_key: Path | None = None,
        part_timeout: float = 600.0,
        stale_grace: float = STALE_GRACE_SECONDS,
        upload_process: bool | None = None,
        uploaders: int | None = None,
        outage_window: float = 900.0,
    ) -> None:
        if num_nodes < 1 or not 0 <= node_rank < num_nodes:
            raise ValueError(f"node_rank {node_rank} is not in [0, num_nodes={num_nodes})")
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        super().__init__(
            run.checkpoints_uri,
            node_rank=node_rank,
            num_nodes=num_nodes,
            retention=Retention(run.checkpoints_uri, keep_last, stale_grace),
            signing_key=signing_key,
            part_timeout=part_timeout,
        )
        self.run = run
        self.keep_last = keep_last
        self.stale_grace = stale_grace
        #: seconds a failing upload/commit keeps retrying (training goes on) before it fails
        self.outage_window = outage_window
        #: in separate upload processes (else in this thread), and how many on this node
        self.upload_process, self.uploaders = upload_settings(upload_process, uploaders)
        self._pool = UploadPool(self.uploaders, node_rank=node_rank)
        self._tid: int | None = None
        #: seconds the last local save took (set by the trainer; the notice decision uses it)
        self.last_save_s: float | None = None
        self._jobs: deque[Any] = deque()
        self._submitted: set[int] = set()
        self._inflight = InFlight()
        self._pending = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._started_at = time.time()
        if self.is_head:
            # Incomplete folders of earlier launches (killed mid-upload) would otherwise be reused
            # by the same step with stale part records; only folders older than this launch go.
            self._jobs.append(("cleanup", None))
            self._pending += 1
        self._thread = threading.Thread(target=self._run, name="checkpoint-committer", daemon=True)
        self._thread.start()

    # -- API -----------------------------------------------------------------------------
    def submit(self, local_dir: Path, step: int, metadata: dict[str, Any]) -> None:
        """Queue ``local_dir`` (this node's files of checkpoint ``step``) for upload and commit."""
        self._raise_pending_error()
        if self._closed:
            raise CheckpointCommitError("committer is closed")
        if step in self._submitted:
            log.warning(
                "checkpoint step %d was already submitted; ignoring the second submit", step
            )
            return
        local_dir = Path(local_dir)
        staged: Path | None = None
        if local_dir.is_dir():
            staged = stage(local_dir)
        else:
            log.info("checkpoint %d: nothing written on node %d; empty part", step, self.node_rank)
        self._inflight.add(step, folder_bytes(staged))
        with self._cond:
            self._submitted.add(step)
            self._pending += 1
            self._jobs.append(("commit", (staged, step, dict(metadata), time.monotonic())))
            self._cond.notify_all()

    def estimate(self) -> dict[str, Any]:
        """This node's numbers for the notice decision (:func:`trainer.spot.deadline.decide_upload`).

        The next checkpoint is as big as the last one uploaded, moves at the throughput that one
        reached and takes as long to save as the last save did (``last_save_s``, set by the
        trainer). Nothing measured yet: ``None`` values (the decision is then to try).
        """
        last = self.uploads[max(self.uploads)] if self.uploads else None
        return {
            "checkpoint_bytes": last["bytes"] if last else None,
            "throughput_bps": self.throughput_bps,
            "save_s": self.last_save_s,
            "inflight_bytes": self.inflight_bytes(),
            "can_abandon": self.upload_process and self.num_nodes == 1,
        }

    def inflight_bytes(self) -> int:
        """Bytes of submitted checkpoints this node has still to upload."""
        return self._inflight.remaining(self.throughput_bps)

    def abandon_inflight(self) -> list[int]:
        """Stop the uploads of submitted checkpoints (a notice's save is worth more than them).

        Only on a one-node run (every node must upload the same steps; a head waiting for a
        part that was abandoned would block the notice's commit): queued ones are dropped, a
        running one is cut by stopping the upload processes (its folder never gets a manifest
        and is cleaned up like any incomplete one). Returns the abandoned steps.
        """
        if self.num_nodes != 1 or not self.upload_process:
            return []
        steps = self._inflight.abandon()
        self._pool.kill()
        if steps:
            log.warning("abandoned the upload of checkpoint(s) %s for the notice's save", steps)
        return steps

    def has_submitted(self, step: int) -> bool:
        """Whether checkpoint ``step`` was already handed over (so it must not be saved again)."""
        return step in self._submitted

    def expedite(self) -> None:
        """Training has stopped (spot notice, end of run): uploads go back to normal priority.

        At niceness 19 they only get the CPU nobody else wants, which is right while training
        runs and wrong once the upload is all that stands between a notice and a commit. Raising
        priority needs root (or CAP_SYS_NICE), which the nodes' launch via SSM has; otherwise
        uploads carry on at low priority (logged once).
        """
        self._pool.expedite(committer_tid=self._tid)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted checkpoint is committed; re-raise a background failure.

        Waiting means training is not running: uploads get normal priority (:meth:`expedite`).
        """
        self.expedite()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending and self._error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"{self._pending} checkpoint commit(s) still running after {timeout}s"
                    )
                self._cond.wait(remaining)
        self._raise_pending_error()

    def close(self) -> None:
        """Wait for pending commits (and a last try at half-deleted old ones), then stop."""
        try:
            self.wait()
            if self.is_head and self.retention.leftovers:
                with self._cond:
                    self._jobs.append(("tidy", None))
                    self._pending += 1
                    self._cond.notify_all()
                self.wait()
        finally:
            # The uploader goes first: it dies with the thread that spawned it (PR_SET_PDEATHSIG
            # follows the parent *thread*), which is the committer thread.
            self._pool.shutdown()
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout=10)

    def __enter__(self) -> CheckpointCommitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background ----------------------------------------------------------------------
    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, StoreOutageError):
                raise err  # the trainer stops as interrupted (exit 75), not as failed
            raise CheckpointCommitError(f"checkpoint upload failed: {err}") from err

    def _run(self) -> None:
        self._tid = threading.get_native_id()
        if not self._pool.urgent:
            lower_thread_priority()
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                kind, job = self._jobs.popleft()
                if kind == "commit":
                    self._inflight.started(job[1])
                # Uploads fell behind the saves: on one node the newest checkpoint supersedes an
                # older one whose upload has not started (this keeps notice -> commit short). Not
                # across nodes: every node must upload the same steps or the head waits in vain.
                superseded = (
                    kind == "commit"
                    and self.num_nodes == 1
                    and any(k == "commit" for k, _ in self._jobs)
                )
            try:
                if kind == "commit" and self._inflight.abandoned(job[1]):
                    log.info("checkpoint %d abandoned before its upload began; skipped", job[1])
                elif superseded:
                    log.info(
                        "checkpoint %d superseded by a newer save before its upload began; skipped",
                        job[1],
                    )
                elif kind == "cleanup":
                    self.retention.cleanup(now=self._started_at, grace=2.0)
                elif kind == "tidy":
                    self.retention.tidy()
                else:  # a store outage is retried for the window while training goes on
                    retry_through_outage(
                        lambda job=job: self._commit(*job),
                        what=f"checkpoint {job[1]}",
                        window=self.outage_window,
                    )
            except BaseException as err:  # kept and re-raised by submit()/wait() in the main thread
                if kind == "commit" and self._inflight.abandoned(job[1]):
                    log.info("checkpoint %d: upload stopped as abandoned (%s)", job[1], err)
                else:
                    log.error("checkpoint %s failed: %s", job[1] if job else kind, err)
                    with self._cond:
                        if self._error is None:
                            self._error = err
            finally:
                if kind == "commit":
                    unstage(job[0])
                with self._cond:
                    if kind == "commit":
                        self._inflight.done(job[1])
                    self._pending -= 1
                    self._cond.notify_all()

    def _commit(
        self, staged: Path | None, step: int, metadata: dict[str, Any], submitted: float
    ) -> None:
        """One queued checkpoint, in this thread (:meth:`CommitProtocol.commit`)."""
        self.commit(
            staged,
            step,
            metadata,
            submitted,
            pool=self._pool if self.upload_process else None,
            abandoned=self._inflight.abandoned,
        )
