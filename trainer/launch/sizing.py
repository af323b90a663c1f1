"""How many nodes an attempt runs on: wait for the full count, go on with fewer, grow back.

Why its own module: spot capacity comes and goes, and every minute the survivors of a reclaim
sit idle is billed. Before each launch :meth:`Sizing.wait` keeps asking the group for the full
count and waits for it, or goes on with fewer (down to ``min_nodes``) when that is cheaper
(:func:`~trainer.launch.recovery.wait_or_continue`, logged with its numbers), and gives up after
``capacity_timeout_s``; while a smaller attempt runs, :meth:`Sizing.grow_back` says when the
group has every node again, so the watcher relaunches at full size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from trainer.launch.fleet import Fleet
from trainer.launch.group import launch_nodes
from trainer.launch.policy import WatchPolicy
from trainer.launch.ports import Capacity, Clock, Member
from trainer.launch.ranks import RankAssignment, assign_ranks
from trainer.launch.recovery import Recovery, wait_or_continue
from trainer.launch.run_end import RunEnd

log = logging.getLogger("trainer.launch.watch")  # the watcher's log lines, as before


class Sizing:
    """The node count of the next attempt, and when a smaller one should grow back."""

    def __init__(
        self,
        *,
        wanted: int,
        min_nodes: int,
        capacity: Capacity,
        fleet: Fleet,
        clock: Clock,
        policy: WatchPolicy,
        recovery: Recovery,
    ) -> None:
        self.wanted, self.min_nodes = wanted, min_nodes
        self.capacity, self.fleet, self.clock = capacity, fleet, clock
        self.policy, self.recovery = policy, recovery

    def wait(
        self, check_end: Callable[[], Any], emit: Callable[[str, dict[str, Any]], None]
    ) -> list[RankAssignment]:
        """The ranks of the next attempt, once enough nodes are InService (``check_end`` each
        poll); raises :class:`~trainer.launch.run_end.RunEnd` after ``capacity_timeout_s``."""
        start = self.clock.now()
        while True:
            check_end()
            members = self.fleet.observe()
            nodes = launch_nodes(members, self.wanted)
            waited = self.clock.now() - start
            if len(nodes) >= self.wanted:
                return assign_ranks(nodes)
            if len(nodes) >= self.min_nodes:
                go, why = wait_or_continue(
                    have=len(nodes), wanted=self.wanted, waited_s=waited,
                    replacing=self.recovery.replacing(members, waited, self.policy),
                    policy=self.policy, resume_s=self.recovery.resume_s or self.policy.resume_s,
                )  # fmt: skip
                if go:
                    log.warning("%s", why)
                    emit("continuing-with-fewer", {"why": why})
                    return assign_ranks(nodes)
            if waited >= self.policy.capacity_timeout_s:
                raise RunEnd(
                    "failed",
                    f"only {len(nodes)} of {self.wanted} node(s) (at least {self.min_nodes} "
                    f"needed) after {waited / 3600:.1f} h waiting for capacity",
                )
            if self.capacity.desired() < self.wanted:
                self.capacity.set_desired(self.wanted)  # idle nodes may have left meanwhile
            emit("waiting-capacity", {"in_service": len(nodes), "wanted": self.wanted})
            self.clock.sleep(self.policy.poll_s)

    def grow_back(self, members: Sequence[Member], running: int) -> tuple[str, str] | None:
        """("grow", detail) when an attempt on ``running`` < wanted nodes can have them all."""
        if running >= self.wanted:
            return None
        usable = launch_nodes(list(members), self.wanted)
        if len(usable) >= self.wanted:
            return "grow", f"{len(usable)} nodes InService again: relaunch on all {self.wanted}"
        if self.capacity.desired() < self.wanted:
            self.capacity.set_desired(self.wanted)  # an idle node left meanwhile: ask again
        return None
