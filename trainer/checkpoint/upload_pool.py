"""The node's upload processes: each rank's checkpoint shards in its own low-priority process.

Why processes: in a thread of the training process, boto3's Python-level HTTP work competes with
the training loop for the GIL (ZeRO-3's per-module hooks are Python); a 2-core benchmark showed
1.38x step time while uploading. The processes are spawned once, run at niceness 19 while
training runs and go back to normal priority when the upload is all that is left
(:meth:`UploadPool.expedite`). They ignore SIGTERM (the launcher sends it to the whole tree on a
spot notice; the rank turns it into "save and commit") and die with their parent.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from artifacts.publish import local_files, upload_files
from artifacts.store import open_store
from trainer.checkpoint.uploaders import assign_uploads

log = logging.getLogger(__name__)

#: Niceness of the upload threads: a busy CPU runs the training ranks first.
UPLOAD_NICENESS = 19


class CheckpointCommitError(RuntimeError):
    """A checkpoint could not be uploaded or committed (raised by submit/wait, not swallowed)."""


_URGENT: Any = None  # in the upload process: the committer's "training has stopped" event
_BASE_NICENESS = 0


def _upload_worker_init(urgent: Any, base: int) -> None:
    """The upload process: deaf to SIGTERM/SIGINT, dies with its parent.

    SIGTERM is what the launcher sends every process of the tree on a spot notice; the parent
    rank turns it into "save and commit", so the uploader must not die of it. If the parent is
    killed outright, the uploader goes too (Linux ``PR_SET_PDEATHSIG``).
    """
    import signal

    global _URGENT, _BASE_NICENESS
    _URGENT, _BASE_NICENESS = urgent, base
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _set_own_niceness(value: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)  # this thread; threads it starts inherit it
    except (AttributeError, OSError):
        pass


def _upload_job(src: Path, dest: str, files: list[str]) -> list[Any]:
    """One uploader's share of a part (one rank's files): low priority unless training stopped.

    Every file is hashed while it streams (``Store.upload_file``); the entries go back to the
    committer thread, which writes the node's part record once every uploader is done.
    """
    _set_own_niceness(UPLOAD_NICENESS)
    if _URGENT is not None and _URGENT.is_set():  # set before expedite() renices: no lost update
        _set_own_niceness(_BASE_NICENESS)
    return upload_files(open_store(dest), src, files)


def _base_niceness() -> int:
    """The training process's own niceness (its main thread's: tid == pid)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getpid())
    except (AttributeError, OSError):
        return 0


def lower_thread_priority() -> None:
    """Give this thread (and the upload threads it starts) a lower CPU priority than training.

    Linux niceness is per thread and inherited by threads created later, so boto3's transfer
    threads inherit it too. Where that is not possible it is only logged: uploads still work.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)
    except (AttributeError, OSError) as err:
        log.debug("could not lower the upload thread's priority: %s", err)


#: ``0`` uploads in a thread of the training process instead of a separate upload process.
UPLOAD_PROCESS_ENV = "TWOSTAGE_UPLOAD_PROCESS"
#: Number of upload processes per node; default: one per local rank (``LOCAL_WORLD_SIZE``).
UPLOADERS_ENV = "TWOSTAGE_UPLOADERS"


def upload_settings(upload_process: bool | None, uploaders: int | None) -> tuple[bool, int]:
    """``(in separate processes?, how many)``: the arguments, else the environment.

    ``TWOSTAGE_UPLOAD_PROCESS=0`` keeps uploads in-process (e.g. for moto's in-process mock);
    ``TWOSTAGE_UPLOADERS`` overrides the default of one uploader per local rank.
    """
    if upload_process is None:
        upload_process = os.environ.get(UPLOAD_PROCESS_ENV, "1") != "0"
    if uploaders is None:
        uploaders = int(
            os.environ.get(UPLOADERS_ENV)
            or os.environ.get("LOCAL_WORLD_SIZE")  # torchrun
            or os.environ.get("LOCAL_SIZE")  # the DeepSpeed launcher
            or 1
        )
    if uploaders < 1:
        raise ValueError(f"uploaders must be >= 1, got {uploaders}")
    return upload_process, uploaders


class UploadPool:
    """``uploaders`` spawned upload processes, started at the first upload."""

    def __init__(self, uploaders: int, *, node_rank: int) -> None:
        self.uploaders = uploaders
        self.node_rank = node_rank
        #: training has stopped: new and running uploads go at normal priority
        self.urgent = False
        self._pool: Any = None
        self._urgent_event: Any = None

    def upload(self, src: Path, dest: str, files: list[str] | None) -> list[Any]:
        """Upload ``files`` of ``src`` (all when None) to ``dest``, a share per process; the
        manifest entries, each file hashed while it streamed."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            self._urgent_event = ctx.Event()
            if self.urgent:
                self._urgent_event.set()
            self._pool = ProcessPoolExecutor(
                max_workers=self.uploaders,
                mp_context=ctx,
                initializer=_upload_worker_init,
                initargs=(self._urgent_event, _base_niceness()),
            )
        names = sorted(files) if files is not None else local_files(src)
        sizes = {name: (src / name).stat().st_size for name in names}
        groups = assign_uploads(sizes, self.uploaders)
        futures = [self._pool.submit(_upload_job, src, dest, group) for group in groups]
        try:
            return [e for f in futures for e in f.result()]
        except BrokenProcessPool as err:
            # An uploader died (killed, out of memory): its files may be half-written, so this
            # node writes no part record and the checkpoint is never committed.
            self._pool = None
            raise CheckpointCommitError(
                f"an upload process of node {self.node_rank} died mid-upload ({err}); "
                "checkpoint not committed"
            ) from err

    def expedite(self, committer_tid: int | None) -> None:
        """Training has stopped (spot notice, end of run): uploads go back to normal priority.

        At niceness 19 they only get the CPU nobody else wants, which is right while training
        runs and wrong once the upload is all that stands between a notice and a commit. Raising
        priority needs root (or CAP_SYS_NICE), which the nodes' launch via SSM has; otherwise
        uploads carry on at low priority (logged once). ``committer_tid``: the committer thread,
        whose in-process uploads are reniced too.
        """
        if self.urgent:
            return
        self.urgent = True
        if self._urgent_event is not None:
            self._urgent_event.set()
        base = _base_niceness()
        targets = [committer_tid] if committer_tid else []
        for pid in self.pids():
            try:  # niceness is per thread on Linux: every thread of the uploader
                targets += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                targets.append(pid)
        for target in targets:
            try:
                os.setpriority(os.PRIO_PROCESS, target, base)
            except ProcessLookupError:
                continue  # a transfer thread that just finished
            except (OSError, AttributeError) as err:
                log.info(
                    "cannot raise the upload priority (%s); it continues at niceness %d",
                    err,
                    UPLOAD_NICENESS,
                )
                return

    def pids(self) -> list[int]:
        """The upload processes running now (none before the first upload)."""
        return list(self._pool._processes) if self._pool else []  # no public API for this

    def kill(self) -> None:
        """Cut the running upload short (abandoned): its caller sees the pool break."""
        import signal

        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def shutdown(self) -> None:
        """Stop the processes (after the last upload)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
