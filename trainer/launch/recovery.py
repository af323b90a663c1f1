"""Recovery bookkeeping of the supervision loop: pure decisions plus what one run measured.

Why its own module: how fast a lost node costs nothing but minutes depends on a few decisions
that must follow measured costs, not fixed timers —

- :func:`settle_after_exit`: after an exit 75, wait for the notice's reclaim (its deadline in
  STATUS), not a fixed two and a half minutes; no wait at all when no node is going away;
- :func:`wait_or_continue`: wait for the replacement, or go on with the survivors now and grow
  back later, from the measured resume time and the expected replacement time (logged with its
  numbers);
- :class:`RepeatGuard`: a resume failing the same way twice without a step of progress ends the
  run ``failed`` instead of relaunching it forever;
- :class:`Recovery`: the watcher's per-run memory of these (launch step, relaunch → first step).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from artifacts.run import NOTICE_REASON, STOP_REASON
from trainer.launch.policy import WatchPolicy

log = logging.getLogger("trainer.launch.watch")  # the watcher's log lines


def notice_deadline(status: Any) -> float | None:
    """The reclaim time of the spot notice in a run's STATUS (``notice``: "spot terminate at
    2026-12-01T23:30:00Z"), or None."""
    from datetime import datetime

    notice = (getattr(status, "extra", None) or {}).get("notice") if status is not None else None
    m = re.search(r" at (\S+)$", notice or "")
    if m is None:
        return None
    try:
        return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def settle_after_exit(reason: str | None, notice_deadline: float | None, now: float,
                      policy: WatchPolicy) -> float:  # fmt: skip
    """Seconds to wait after an exit 75 before counting the nodes again.

    A spot notice's reclaim comes at its deadline (then the group starts the replacement):
    wait until then, plus a poll. A stop request or a store outage loses no node: no wait.
    Unknown: the fixed ``settle_s``.
    """
    if reason is not None and reason != NOTICE_REASON:
        return 0.0
    if notice_deadline is not None:
        return max(0.0, min(policy.settle_s, notice_deadline - now + policy.poll_s))
    return policy.settle_s


def wait_or_continue(
    *, have: int, wanted: int, waited_s: float, replacing: bool, policy: WatchPolicy,
    resume_s: float,
) -> tuple[bool, str]:  # fmt: skip
    """Go on with ``have`` < ``wanted`` nodes now (True), or keep waiting for the replacement.

    Decided by what the user pays for: node time billed without progress (the lost node is not
    billed until its replacement runs). Waiting leaves the ``have`` survivors idle until the
    replacement is InService (``left`` s), then the whole cluster resumes once; going on
    resumes the survivors now (they then train at their own full speed) and the whole cluster
    once more when the run grows back. The whole-cluster resume is paid on both paths, so
    going on is cheaper exactly when ``resume < left``. With the resharding load a resume is
    minutes (BENCHMARKS.md §20), shorter than a replacement spot node's boot. No replacement
    launching (capacity short) means waiting is open-ended: continue. The reason carries both
    costs in node-seconds (logged).
    """
    left = max(0.0, policy.replacement_s - waited_s) if replacing else float("inf")
    cont = have * resume_s + wanted * resume_s
    wait = have * left + wanted * resume_s
    nodes = f"{have} of {wanted} node(s)"
    if waited_s >= policy.capacity_wait_s or cont < wait:
        why = ("no replacement is launching" if not replacing else
               f"replacement expected in {left:.0f} s")  # fmt: skip
        return True, (
            f"continuing with {nodes}: {why}; going on bills {cont:.0f} node-s without "
            f"progress (a resume of {resume_s:.0f} s now on {have}, one on {wanted} when growing "
            f"back) vs {'∞' if wait == float('inf') else f'{wait:.0f}'} node-s waiting"
        )
    return False, (
        f"waiting for the replacement: expected in {left:.0f} s ({wait:.0f} node-s without "
        f"progress) vs {cont:.0f} node-s going on with {nodes} (resume {resume_s:.0f} s) and "
        "growing back"
    )


#: Trainer reasons that are not the run's fault (a relaunch is the cure, however often).
NOT_A_FAULT = (NOTICE_REASON, STOP_REASON)


@dataclass
class RepeatGuard:
    """Ends a relaunch loop: attempts that end the same way, twice, without the step moving.

    Why: a resume that cannot succeed (a conversion over the collective's time-out, a corrupt
    shard every node trips on, a bug) would otherwise be relaunched until ``max_restarts``,
    burning spot hours. "The same way" is the trainer's STATUS reason (digits masked: time-outs
    and PIDs differ) or, without one, the attempt's verdict; lost nodes, growing back, spot
    notices and stop requests are not faults and reset nothing.
    """

    limit: int = 2
    last: str | None = None
    count: int = 0

    def observe(self, kind: str, detail: str, reason: str | None, progressed: bool) -> str | None:
        """The give-up reason once the same failure repeats ``limit`` times, else None."""
        if progressed:
            self.last, self.count = None, 0
        if kind in ("lost", "grow") or (reason or "") in NOT_A_FAULT:
            return None
        if kind == "interrupted" and not reason:
            return None  # exit 75 without the trainer's word: SSM's time-out, a reclaim
        what = reason or re.sub(r"^node \d+ ", "a node ", detail)
        key = kind + ": " + re.sub(r"\d+", "N", what)
        self.count = self.count + 1 if key == self.last else 1
        self.last = key
        if self.count < self.limit:
            return None
        return (
            f"the resume failed the same way {self.count} times in a row without a step of "
            f"progress ({what}); not relaunching it again"
        )




@dataclass
class Recovery:
    """What the watcher remembers between attempts to decide the next recovery."""

    repeats: RepeatGuard
    launch_step: int = 0
    launched_at: float | None = None
    resume_s: float | None = None
    """Relaunch → first step of this run's newest relaunch, measured (None until seen)."""

    def launched(self, status: Any, now: float) -> None:
        self.launch_step = status.global_step if status else 0
        self.launched_at = now

    def progress(self, status: Any, now: float) -> float | None:
        """The relaunch → first step seconds, the first time the step moves after a launch."""
        if self.launched_at is None or status is None or status.global_step <= self.launch_step:
            return None
        self.resume_s, self.launched_at = now - self.launched_at, None
        return self.resume_s

    def after(
        self, kind: str, detail: str, status: Any, now: float, policy: WatchPolicy
    ) -> tuple[str | None, float]:
        """(give-up reason or None, seconds to wait before relaunching) after an attempt ended."""
        step = status.global_step if status else 0
        why = status.reason if status and str(status.state) in ("failed", "interrupted") else None
        give_up = self.repeats.observe(kind, detail, why, step > self.launch_step)
        if kind == "interrupted":
            return give_up, settle_after_exit(why, notice_deadline(status), now, policy)
        return give_up, 0.0

    def replacing(self, members: list[Any], waited: float, policy: WatchPolicy) -> bool:
        """Whether the group is bringing a node up (a pending member, or a loss so recent that
        Auto Scaling has not launched its replacement yet)."""
        pending = any(m.state == "pending" or m.lifecycle.startswith("Pending") for m in members)
        return pending or waited < policy.launch_grace_s


def record_failure(run: Any, reason: str) -> None:
    """STATUS says ``failed`` and why (`invoke status` shows the controller's reason)."""
    from artifacts.run import RunState, Status

    try:
        st = run.read_status() or Status(state=RunState.FAILED)
        run.write_status(replace(st, state=RunState.FAILED, reason=f"controller: {reason}"))
    except Exception as err:  # noqa: BLE001 - scaling to 0 must happen regardless
        log.warning("could not record the failure in the run status: %s", err)
