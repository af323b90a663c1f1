"""When to checkpoint: every ``save_steps`` optimizer steps *or* every ``save_minutes``, whichever first.

Why time as well as steps: the brief's ``save_steps = 10000`` at ~90 s per optimizer step of a 7B
model is a checkpoint every ten days; a preemption whose notice save fails (no notice, a notice
too short for the upload) would lose all of that. With a time bound the loss is at most the
interval (plus one upload). The decisions are pure functions of a clock reading; the HF glue
(:class:`trainer.loop.callbacks.TimedSaveCallback`) takes the clock as an argument so tests drive it with a fake one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def save_due(now: float, last_save: float, save_minutes: float) -> bool:
    """Whether ``save_minutes`` (0 = off) have passed between ``last_save`` and ``now`` (seconds)."""
    if save_minutes <= 0:
        return False
    return now - last_save >= save_minutes * 60.0


def at_risk_minutes(now: float, last_commit: float | None, started: float | None = None) -> float:
    """Minutes of training a preemption right now would lose: since the last commit (or the start).

    ``now``, ``last_commit`` and ``started`` are Unix times; with neither a commit nor a start
    known, nothing can be said and 0 is returned.
    """
    since = last_commit if last_commit is not None else started
    if since is None:
        return 0.0
    return max(0.0, (now - since) / 60.0)


def at_risk_line(now: float, last_commit: float | None, started: float | None = None) -> str:
    """What ``invoke status`` and ``STATUS.json`` say about the work a preemption would cost."""
    minutes = at_risk_minutes(now, last_commit, started)
    what = "the last commit" if last_commit is not None else "the start (no commit yet)"
    return f"at risk since {what}: {minutes:.0f} min"
