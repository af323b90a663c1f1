"""Progress of ``prepare-data``: a bar on a terminal, a log line every 30 s, and the run's
``STATUS.json`` (state ``preparing``, with ``data_prep``) every 10 s from node 0 — and the state
every ending of preparation leaves: ``prepared``, ``failed`` (bad input, with its one line) or
``interrupted``."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from artifacts.run import Run, RunState

log = logging.getLogger(__name__)

STATUS_EVERY_S = 10.0


def status_writer(run: Run, node_count: int) -> Any:
    """The writer of the run's status while data is prepared (not a launch: none is recorded)."""
    from trainer.status import StatusWriter

    return StatusWriter(run, enabled=True, node_count=node_count, launch=False)


def record_status(writer: Any, progress: dict[str, Any]) -> None:
    """The run's status says it is preparing data and how far (what `invoke status` shows)."""
    writer.write(RunState.PREPARING, data_prep=progress)


def record_prepared(writer: Any, progress: dict[str, Any]) -> None:
    """The cache is committed: preparation's own final state (a launch then writes ``running``)."""
    writer.write(RunState.PREPARED, data_prep={**progress, "stage": "committed"})


def record_stopped(writer: Any, err: BaseException) -> None:
    """Preparation ended without a cache: say how, so no status says ``preparing`` forever."""
    from artifacts.errors import UserError

    if isinstance(err, KeyboardInterrupt | SystemExit):
        state = RunState.INTERRUPTED
        reason = "data preparation was interrupted; run it again to continue (finished shards are kept)"
    elif isinstance(err, UserError):
        state, reason = RunState.FAILED, f"data preparation refused the input: {err}"
    else:
        state, reason = RunState.FAILED, f"data preparation failed: {type(err).__name__}: {err}"
    writer.write(state, reason=reason[:500])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends ``prepare-data`` like Ctrl-C does, so its ``interrupted`` state is recorded
    (the default action would kill the process with ``preparing`` left behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Progress:
    """A bar with MB/s, tokens/s and ETA on a terminal; a log line every 30 s and STATUS.json every 10 s."""

    def __init__(self, total: int, status: Any, bar: bool, stage: str = "tokenizing") -> None:
        """``status``: a :func:`status_writer` (node 0), or None (no status writes); ``stage``:
        what ``invoke status`` says is running (``dedup-scan`` or ``tokenizing``)."""
        from tqdm.auto import tqdm

        self.total, self.done, self.tokens = total, 0, 0
        self.started = self._last_log = self._last_status = time.monotonic()
        self.status = status
        self.stage = stage
        self.bar = tqdm(
            total=total, desc=f"prepare-data ({stage})", unit="B", unit_scale=True, unit_divisor=1024,
            disable=None if bar else True, leave=False,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        return {
            "stage": self.stage,
            "bytes_done": self.done,
            "bytes_total": self.total,
            "tokens": self.tokens,
            "mb_per_s": round(rate / 1e6, 3),
            "tokens_per_s": round(self.tokens / elapsed),
            "eta_s": round((self.total - self.done) / rate) if rate > 0 else None,
        }

    def advance(self, nbytes: int, ntokens: int) -> None:
        self.done += nbytes
        self.tokens += ntokens
        self.bar.update(nbytes)
        now = time.monotonic()
        snap = None
        if now - self._last_log >= 30:
            snap = self.snapshot()
            log.info(
                "data: %.1f%% of %.1f MB, %.2f MB/s, %d tokens/s, ETA %s s",
                100 * self.done / max(self.total, 1), self.total / 1e6, snap["mb_per_s"],
                snap["tokens_per_s"], snap["eta_s"],
            )  # fmt: skip
            self._last_log = now
        if now - self._last_status >= 5:
            snap = snap or self.snapshot()
            self.bar.set_postfix_str(f"{snap['tokens_per_s'] / 1e3:.0f}k tok/s", refresh=False)
        if self.status is not None and now - self._last_status >= STATUS_EVERY_S:
            record_status(self.status, snap or self.snapshot())
            self._last_status = now

    def close(self) -> None:
        self.bar.close()
