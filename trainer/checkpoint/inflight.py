"""The uploads a node still has in flight: how many bytes are left, and which were abandoned.

Why: a spot notice shares the node's bandwidth with a periodic checkpoint still uploading, so
the notice decision (:func:`trainer.spot.deadline.decide_upload`) must count those bytes; and
when the notice's own save is worth more, the older upload is abandoned (never committed).
Thread-safe: the committer's thread updates it while the training loop reads it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def folder_bytes(folder: Path | None) -> int:
    """Bytes of the files below ``folder`` (0 for None)."""
    if folder is None:
        return 0
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


class InFlight:
    """step → (bytes, upload start) of the checkpoints submitted and not yet done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[int, float | None]] = {}
        self._abandoned: set[int] = set()

    def add(self, step: int, nbytes: int) -> None:
        with self._lock:
            self._jobs[step] = (nbytes, None)

    def started(self, step: int) -> None:
        with self._lock:
            if step in self._jobs:
                self._jobs[step] = (self._jobs[step][0], time.monotonic())

    def done(self, step: int) -> None:
        with self._lock:
            self._jobs.pop(step, None)

    def remaining(self, throughput_bps: float | None, now: float | None = None) -> int:
        """Bytes still to upload; a running upload is assumed to move at ``throughput_bps``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            jobs = list(self._jobs.values())
        left = 0
        for nbytes, started in jobs:
            done = (now - started) * throughput_bps if started is not None and throughput_bps else 0
            left += max(0, int(nbytes - done))
        return left

    def abandon(self) -> list[int]:
        """Mark every checkpoint in flight as abandoned; returns their steps."""
        with self._lock:
            steps = sorted(self._jobs)
            self._abandoned.update(steps)
        return steps

    def abandoned(self, step: int) -> bool:
        with self._lock:
            return step in self._abandoned
