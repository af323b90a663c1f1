"""How a supervised run ends: the conditions checked at every poll, and the order of the end.

Why its own module: every phase of the watcher (waiting for capacity, following an attempt) ends
a run the same way, by raising :class:`RunEnd` (from :func:`check_end` or from a bound of its
own); and the end itself is one order that matters (:func:`wind_down`): the survivors commit a
checkpoint first, the failure is recorded after their own last word, then desired capacity 0 and
a wait until no instance is left (one left running bills silently).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from artifacts.run import Status
from trainer.launch.cost import FleetCostReport
from trainer.launch.deadman import over_budget
from trainer.launch.fleet import Fleet
from trainer.launch.policy import WatchPolicy
from trainer.launch.ports import Clock, RunView
from trainer.launch.recovery import record_failure

log = logging.getLogger("trainer.launch.watch")  # the watcher's log lines, as before

#: The states of a run that ended well (the model is published).
DONE_STATES = ("converged", "finished")


class RunEnd(Exception):
    """The run is over (``state``), for ``reason``."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state, self.reason = state, reason


def check_end(
    run: RunView,
    *,
    clock: Clock,
    started: float,
    cost: Callable[[], FleetCostReport],
    policy: WatchPolicy,
) -> Status | None:
    """Raise :class:`RunEnd` when the run is done, stopped or over a cap; else its status.

    ``cost`` is asked only when there is a dollar cap.
    """
    status = run.read_status()
    if status is not None and status.done:
        raise RunEnd(str(status.state), f"run {status.state} at step {status.global_step}")
    if run.stop_requested():
        raise RunEnd("stopped", "stopped on request (`invoke stop`)")
    now = clock.now()
    dollars = cost().dollars if policy.max_dollars is not None else None
    cap = over_budget(
        now,
        started_at=started,
        dollars=dollars,
        max_hours=policy.max_hours,
        max_dollars=policy.max_dollars,
    )
    if cap.act:
        raise RunEnd("failed", cap.reason)
    return status


def wind_down(
    state: str,
    reason: str,
    *,
    run: RunView,
    fleet: Fleet,
    policy: WatchPolicy,
    stop_survivors: Callable[[], None],
    emit: Callable[[str, dict[str, Any]], None],
) -> list[str]:
    """Stop what still trains (unless the run is done), record a failure, scale to 0 and drain.

    Returns the instances still live when the drain timed out (should be none).
    """
    if state not in DONE_STATES:
        try:
            stop_survivors()  # commit a checkpoint before the nodes go
        except Exception as err:  # noqa: BLE001 - scaling to 0 below must happen regardless
            log.warning("could not stop the trainers gracefully: %s", err)
    if state == "failed":  # after the survivors' own last word
        record_failure(run, reason)
    emit("scaling-to-zero", {"why": reason})
    return fleet.drain(
        retries=policy.max_poll_errors,
        poll_s=policy.poll_s,
        timeout_s=policy.drain_timeout_s,
        on_wait=lambda left: emit("scaling-to-zero", {"left": left}),
    )
