"""The run's status (``STATUS.json``) as stage 1 writes it, and the loss history it reports.

The status schema, its states and where it lives belong to the run protocol
(:mod:`artifacts.run`); this module only writes it from global rank 0 (the trainer) or node 0
(``prepare-data``), in the background.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from artifacts.ending import STATUS_FALLBACK_ENV
from artifacts.run import Run, RunState, Status, now_iso

log = logging.getLogger(__name__)


class StatusWriter:
    """Writes the run's status from global rank 0 — in the background, coalesced, best effort.

    Why in the background: a status write is a store round trip, and during a store outage a
    synchronous one blocked rank 0's training loop for ~50 s. :meth:`write` only records the
    newest :class:`Status`; a thread writes the newest one it has (older ones are skipped),
    retrying through an outage until it lands (a warning every ``outage_window`` seconds).
    :meth:`close` waits for the last write (bounded): the launcher reads the status after the
    ranks exit, and gets the one the store would not take through a local file.

    Across launches the status tells the truth: until this launch has its own, the step, epoch,
    best val loss and history of the previous status are carried forward (a relaunch no longer
    resets them), and ``launches`` lists every launch with its world size.
    """

    def __init__(
        self,
        run: Run,
        *,
        enabled: bool,
        node_count: int,
        world_size: int | None = None,
        outage_window: float = 900.0,
        launch: bool = True,
    ) -> None:
        self.run = run
        self.enabled = enabled
        self.node_count = node_count
        self.outage_window = outage_window
        self.started_at = now_iso()
        #: Functions whose fields are added to every write (e.g. the checkpoint report).
        self.providers: list[Callable[[], dict[str, Any]]] = []
        #: The status an earlier launch left (None on other ranks): carried-over fields come from it.
        self.previous: Status | None = None
        #: ``{"step", "from_world_size", "world_size", "note"}`` when this launch resumed.
        self.resumed: dict[str, Any] | None = None
        self._carried: dict[str, Any] = {}
        launches: list[Any] = []
        previous = self.previous = run.read_status() if enabled else None
        if previous is not None:
            # A resumed run keeps the time the run first started, its step and its history.
            if previous.started_at and not previous.done:
                self.started_at = previous.started_at
            self._carried = {
                "global_step": previous.global_step,
                "epoch": previous.epoch,
                "best_val_loss": previous.best_val_loss,
                "val_loss_history": [dict(e) for e in previous.val_loss_history],
            }
            launches = list(previous.extra.get("launches") or [])
        # Data preparation writes the status too (launch=False) but is not a launch of the ranks.
        self.launches = [*launches, {"started_at": now_iso(), "world_size": world_size}][
            : len(launches) + int(launch)
        ]
        self._pending: Status | None = None
        #: the status being written, and the newest one the store did not take (kept for close)
        self._writing: Status | None = None
        self._unwritten: Status | None = None
        self._abandoned = False
        self._busy = False
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._loop, name="status-writer", daemon=True)
            self._thread.start()

    def write(
        self,
        state: str | RunState,
        *,
        global_step: int | None = None,
        epoch: float | None = None,
        best_val_loss: float | None = None,
        converged: bool = False,
        val_loss_history: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Status:
        """Record the run's status (plus times, node count, launches); written in the background.

        Fields left out keep their last known value (this launch's, else the previous status's).
        """
        for provide in self.providers:
            extra = {**provide(), **extra}
        known = {
            k: extra.pop(k)
            for k in ("final", "reason", "converged_at_step", "world_size")
            if k in extra
        }
        if self.resumed:
            self.launches[-1]["resumed_at_step"] = self.resumed["step"]
            self.launches[-1]["from_world_size"] = self.resumed["from_world_size"]
            extra = {"resumed": self.resumed, **extra}
        given = {
            "global_step": global_step,
            "epoch": epoch,
            "best_val_loss": best_val_loss,
            "val_loss_history": val_loss_history,
        }
        for key, value in given.items():
            if value is not None and (key != "val_loss_history" or value):
                self._carried[key] = value
        c = self._carried
        status = Status(
            state=RunState(state),
            global_step=int(c.get("global_step") or 0),
            epoch=None if c.get("epoch") is None else float(c["epoch"]),
            best_val_loss=c.get("best_val_loss"),
            converged=bool(converged),
            val_loss_history=tuple(c.get("val_loss_history") or ()),
            started_at=self.started_at,
            updated_at=now_iso(),
            node_count=self.node_count,
            extra={**extra, "launches": [dict(x) for x in self.launches]},
            **known,
        )
        if self.enabled:
            with self._cond:
                self._pending = status
                self._cond.notify_all()
        return status

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the newest status is written (or given up on); False on time-out."""
        if self._thread is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (bounded by ``timeout``, default the outage window) and stop the thread.

        A status the store did not take by then is abandoned — a late write must never land
        over a newer writer's — and handed to the launcher through the local file
        ``$TWOSTAGE_STATUS_FALLBACK`` when it set one (:func:`artifacts.ending.settle`).
        """
        done = self.flush(self.outage_window if timeout is None else timeout)
        with self._cond:
            left = self._pending or self._writing or self._unwritten
            self._closed = self._abandoned = True
            self._cond.notify_all()
        if not done or left is not None:
            log.warning("the run's status could not be written before exit (store unreachable)")
        if self.enabled:
            hand_over(left)  # None: everything was written; an older hand-over is withdrawn

    def _loop(self) -> None:
        from trainer.checkpoint.outage import StoreOutageError, retry_through_outage

        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None or self._abandoned:
                    return
                status, self._pending, self._busy = self._pending, None, True

            newest = [status]

            def put(newest: list[Status] = newest) -> None:
                with self._cond:  # a newer status arrived meanwhile: write that one instead
                    if self._abandoned:
                        raise _Abandoned("the writer was closed")
                    if self._pending is not None:
                        newest[0], self._pending = self._pending, None
                    self._writing = newest[0]
                self.run.write_status(newest[0])
                with self._cond:
                    self._writing = self._unwritten = None

            try:
                retry_through_outage(put, what="status", window=self.outage_window)
            except _Abandoned:
                return
            except StoreOutageError as err:
                # Retried until it lands or close() gives up: the newest status is the one that
                # tells the truth at exit (an outage that outlasts the window ends the run, and
                # its "interrupted" must not be dropped with the write that failed before it).
                log.warning("status not written yet: %s", err)
                with self._cond:
                    self._unwritten = newest[0]
                    if self._pending is None:
                        self._pending = newest[0]
            except Exception as err:  # noqa: BLE001 - a status write must never stop training
                log.warning("status not written: %s", err)
                with self._cond:
                    self._unwritten = newest[0]
            finally:
                with self._cond:
                    self._writing = None
                    self._busy = False
                    self._cond.notify_all()


class _Abandoned(RuntimeError):
    """Internal: the writer was closed while a write was being retried (not a store error)."""


def hand_over(status: Status | None) -> None:
    """Leave ``status`` in the launcher's fallback file (``$TWOSTAGE_STATUS_FALLBACK``), if any;
    ``None`` removes what an earlier writer of this process left there.

    Why a local file: when the store is down at exit, only the process that started the ranks
    (on this machine) can still learn why they stopped; it records the status once it can.
    """
    path = os.environ.get(STATUS_FALLBACK_ENV)
    if not path:
        return
    try:
        if status is None:
            if os.path.exists(path):
                os.remove(path)
            return
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(status.to_json())
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not hand the status to the launcher (%s): %s", path, err)


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Machine-readable losses from the HF ``TrainerState.log_history`` (for plots)."""
    train = [
        {
            "step": e.get("step"),
            "epoch": e.get("epoch"),
            "loss": e["loss"],
            "learning_rate": e.get("learning_rate"),
        }
        for e in log_history
        if "loss" in e
    ]
    val = [
        {"step": e.get("step"), "epoch": e.get("epoch"), "val_loss": e["eval_loss"]}
        for e in log_history
        if "eval_loss" in e
    ]
    return {"train": train, "val": val}
