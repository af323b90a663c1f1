"""Dead-man switches: pure decisions that end billing when everything else has failed.

Three guards, each a function of plain numbers (seconds since the epoch) so tests drive them with
a fake clock:

- :func:`node_should_leave` — run on every node by ``python -m trainer.launch.node_agent``: a node
  whose trainer is not running leaves its Auto Scaling group when no launch has arrived for
  ``run.idle_timeout_minutes`` since the trainer exited (or the node booted), or at once when the
  controller's heartbeat in the bucket is that old (nobody is left to relaunch it);
- :class:`StallWatch` — run by the controller: the global step in ``STATUS.json`` has not moved for
  ``run.stall_timeout_minutes`` while the trainer should be training → scale the group to 0 (while
  the status says ``preparing``, the bytes tokenized count as progress: a 1 TB preparation takes
  hours before step 1);
- :func:`over_budget` — run by the controller: ``run.max_hours`` of wall time or ``run.max_dollars``
  of spend reached → stop the run gracefully and scale to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_IDLE_TIMEOUT_S = 15 * 60.0
DEFAULT_STALL_TIMEOUT_S = 60 * 60.0


@dataclass(frozen=True)
class Decision:
    """What a guard decided, and why (the why is logged and written to the bucket)."""

    act: bool
    reason: str


def node_should_leave(
    now: float,
    *,
    trainer_running: bool,
    idle_since: float,
    heartbeat_at: float | None,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
) -> Decision:
    """Whether this node should take itself out of its group (and stop billing).

    ``idle_since`` is when the node last became idle: its boot, or the end of its last trainer.
    ``heartbeat_at`` is the controller's last heartbeat (None: never seen one yet, e.g. while the
    controller itself is still booting; the idle rule then bounds the wait).
    """
    if trainer_running:
        return Decision(False, "trainer running")
    idle = now - idle_since
    if idle >= idle_timeout_s:
        return Decision(
            True, f"no launch for {idle / 60:.0f} min (idle timeout {idle_timeout_s / 60:.0f} min)"
        )
    if heartbeat_at is not None and now - heartbeat_at >= idle_timeout_s:
        age = now - heartbeat_at
        return Decision(
            True,
            f"controller heartbeat is {age / 60:.0f} min old (timeout {idle_timeout_s / 60:.0f} min):"
            " nobody will relaunch this node",
        )
    return Decision(False, f"idle for {idle / 60:.1f} min, waiting for a launch")


@dataclass
class StallWatch:
    """Remembers when the global step last moved; says when it has not moved for too long."""

    timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    step: int | None = None
    since: float | None = None
    data_bytes: int | None = None

    def reset(self, now: float) -> None:
        """A new launch: the trainer gets the full timeout again (data preparation, warm-up)."""
        self.step, self.since, self.data_bytes = None, now, None

    def observe(self, now: float, step: int | None, data_bytes: int | None = None) -> Decision:
        """Feed the step from ``STATUS.json`` (None: not written yet) and, while it says
        ``preparing``, the bytes tokenized so far; stalled → ``act``."""
        if self.since is None:
            self.since = now
        if step is not None and step != self.step:
            self.step, self.since = step, now
            return Decision(False, f"step {step}")
        if data_bytes is not None and data_bytes != self.data_bytes:
            self.data_bytes, self.since = data_bytes, now
            return Decision(False, f"preparing data: {data_bytes / 1e9:.2f} GB tokenized")
        still = now - self.since
        if still >= self.timeout_s:
            at = "no step yet" if self.step is None else f"step {self.step}"
            return Decision(
                True,
                f"global step has not moved for {still / 60:.0f} min ({at}; "
                f"run.stall_timeout_minutes = {self.timeout_s / 60:.0f})",
            )
        return Decision(False, f"step unchanged for {still / 60:.1f} min")


def preparing_bytes(status: Any) -> int | None:
    """Bytes tokenized so far when ``status`` (a :class:`~artifacts.run.Status`) says ``preparing``."""
    from artifacts.run import RunState

    if status is None or status.state is not RunState.PREPARING:
        return None
    prep = status.extra.get("data_prep")
    return int(prep.get("bytes_done") or 0) if isinstance(prep, dict) else 0


def over_budget(
    now: float,
    *,
    started_at: float,
    dollars: float | None,
    max_hours: float | None,
    max_dollars: float | None,
) -> Decision:
    """Whether the run hit ``run.max_hours`` (wall time since submit) or ``run.max_dollars``."""
    hours = (now - started_at) / 3600.0
    if max_hours is not None and hours >= max_hours:
        return Decision(True, f"ran {hours:.1f} h, the cap run.max_hours = {max_hours:g}")
    if max_dollars is not None and dollars is not None and dollars >= max_dollars:
        return Decision(True, f"spent ${dollars:.2f}, the cap run.max_dollars = ${max_dollars:g}")
    return Decision(False, "within budget")
