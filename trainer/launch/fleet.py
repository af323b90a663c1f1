"""What the group's instances cost a run: every member seen while it ran, as cost spans.

The group forgets an instance soon after it ends; :class:`Fleet` remembers each one it saw (and
when it first saw it ended, when EC2 has no end time yet) so the final cost report counts the
spot nodes that were reclaimed mid-run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from trainer.launch.cost import FleetCostReport, InstanceSpan, Price, fleet_cost_report
from trainer.launch.ports import LIVE_STATES, Capacity, Clock, Member

log = logging.getLogger("trainer.launch.watch")  # the watcher's log lines, as before


class Fleet:
    """The group's members as observed over one run (the watcher's view of its capacity)."""

    def __init__(self, capacity: Capacity, clock: Clock) -> None:
        self.capacity, self.clock = capacity, clock
        self._members: dict[str, Member] = {}
        self._seen_end: dict[str, float] = {}

    def observe(self) -> list[Member]:
        """The group's members now (and remember them for the cost)."""
        members = self.capacity.members()
        now = self.clock.now()
        for m in members:
            self._members[m.instance_id] = m
            if m.state not in LIVE_STATES and m.end_time is None:
                self._seen_end.setdefault(m.instance_id, now)
        return members

    def cost_report(
        self,
        *,
        started: float,
        prices: dict[str, Price],
        controller: tuple[str, Price] | None,
    ) -> FleetCostReport:
        """Node-hours and dollars since ``started``, per instance type (controller included)."""
        now = self.clock.now()
        spans = []
        for m in self._members.values():
            end = m.end_time if m.end_time is not None else self._seen_end.get(m.instance_id)
            if end is not None and end <= started:
                continue  # ended before this run
            spans.append(
                InstanceSpan(m.instance_id, max(m.launch_time, started), end, m.instance_type)
            )
        ctl = None
        if controller is not None:
            ctl = (controller[0], (now - started) / 3600.0, controller[1])
        return fleet_cost_report(spans, now=now, prices=prices, controller=ctl)


    def drain(
        self, *, retries: int, poll_s: float, timeout_s: float, on_wait: Callable[[int], None]
    ) -> list[str]:
        """Desired capacity 0, then wait until AWS has terminated every node; those left."""
        for tries in range(retries):
            try:
                self.capacity.set_desired(0)
                break
            except Exception as err:  # noqa: BLE001 - retried: this is what stops the billing
                log.warning("scale to 0 failed (%d): %s", tries + 1, err)
                self.clock.sleep(poll_s)
        deadline = self.clock.now() + timeout_s
        while True:
            live = [m.instance_id for m in self.observe() if m.state in LIVE_STATES]
            if not live or self.clock.now() >= deadline:
                return live
            on_wait(len(live))
            self.clock.sleep(min(poll_s, 30.0))

def spans_of(members: Sequence[Member], since: float) -> list[InstanceSpan]:
    """Cost spans of the members that lived after ``since`` (for `invoke status`)."""
    return [
        InstanceSpan(m.instance_id, max(m.launch_time, since), m.end_time, m.instance_type)
        for m in members
        if m.end_time is None or m.end_time > since
    ]
