"""The supervision loop's policy and its result: timings and bounds in, :class:`Outcome` out.

Plain data and pure functions (no port, no clock): :class:`WatchPolicy` (from the run's ``[run]``
recipe and the controller's defaults), the message and the stage-2 command a user reads at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.launch.cost import FleetCostReport


@dataclass(frozen=True)
class WatchPolicy:
    """Timings and bounds of the supervision loop (seconds)."""

    poll_s: float = 10.0
    """How often the controller looks (SSM command states, the group, STATUS): a lost node or an
    exit is seen within this, not a minute later."""
    max_failures: int = 3
    """Consecutive failed attempts (exit code not 0/75) before giving up."""
    max_restarts: int = 50
    """Relaunches of any kind (spot interruptions included) before giving up."""
    backoff_base_s: float = 60.0
    backoff_max_s: float = 1800.0
    settle_s: float = 150.0
    """After exit 75 whose cause is unknown: a spot reclaim follows its notice within two
    minutes. With a notice deadline in STATUS the wait ends at that deadline; after a stop
    request or a store outage there is no wait (:func:`settle_after_exit`)."""
    stop_grace_s: float = 600.0
    """Survivors get this long to commit and exit after SIGTERM before their command is cancelled."""
    min_nodes: int | None = None
    """``run.min_nodes``: the fewest nodes to go on with; None: every node."""
    capacity_wait_s: float = 600.0
    """The longest wait for the full node count before going on with fewer (keep it below the
    nodes' idle timeout, or idle nodes leave while we wait); within it the choice is computed
    (:func:`wait_or_continue`)."""
    replacement_s: float = 420.0
    """Expected time for the group to bring a replacement node InService (spot launch, DLAMI
    boot, bootstrap from the wheelhouse); the wait-or-continue choice weighs it."""
    launch_grace_s: float = 90.0
    """After a loss the group launches the replacement within this; until then one is assumed
    to be coming (after it, no pending instance means capacity is short)."""
    resume_s: float = 240.0
    """Relaunch → first training step, until this run has measured its own (the watcher times
    every relaunch and uses the newest)."""
    capacity_timeout_s: float = 6 * 3600.0
    """Give up when not even ``min_nodes`` are InService for this long."""
    stall_timeout_s: float = 3600.0
    max_hours: float | None = None
    max_dollars: float | None = None
    drain_timeout_s: float = 900.0
    """After scaling to 0: how long to wait until no instance is left."""
    max_poll_errors: int = 10

    def backoff(self, failures: int) -> float:
        """Exponential backoff after the n-th consecutive failure (n ≥ 1), capped."""
        return min(self.backoff_base_s * 2 ** max(failures - 1, 0), self.backoff_max_s)


@dataclass
class Outcome:
    """How the run ended; ``lines()`` is what the user reads."""

    state: str
    """converged | finished | stopped | failed."""
    message: str
    attempts: int
    cost: FleetCostReport | None = None
    download_command: str | None = None
    left_running: list[str] = field(default_factory=list)
    """Instances still live when the drain timed out (should be empty)."""

    def lines(self) -> list[str]:
        out = [self.message]
        if self.left_running:
            out.append(f"warning: still running after scale-to-0: {', '.join(self.left_running)}")
        else:
            out.append("nodes: desired capacity 0, no instance left running")
        if self.cost is not None:
            out += self.cost.lines()
        if self.download_command:
            out.append(f"stage 2: {self.download_command}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "message": self.message,
            "attempts": self.attempts,
            "cost": None if self.cost is None else self.cost.to_dict(),
            "download_command": self.download_command,
            "left_running": list(self.left_running),
        }


def download_command(run_uri: str, public_key: str | None = None) -> str:
    """The exact stage-2 command for the published model."""
    cmd = f"invoke download --src {run_uri.rstrip('/')}/final --dest ./model"
    return cmd + (f" --public-key {public_key}" if public_key else "")


def end_message(state: str, reason: str, run_uri: str) -> str:
    """What the user reads first about a run that ended in ``state`` for ``reason``."""
    if state in ("converged", "finished"):
        return f"{reason}; model at {run_uri.rstrip('/')}/final"
    if state == "stopped":
        return (
            f"{reason}: the trainer committed a checkpoint; `invoke pretrain` with the same "
            "--run resumes it"
        )
    return (
        f"gave up: {reason}. Committed checkpoints stay in {run_uri}; see "
        "`invoke logs`, fix the cause, then `invoke pretrain` with the same --run resumes"
    )
