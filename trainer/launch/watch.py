"""The supervision state machine of one run, over injected ports (the controller runs it).

One :class:`Watcher` takes a run from "submitted" to "nodes at 0":

1. **capacity**: set the group's desired capacity to the run's node count and wait until that
   many instances are InService; after ``capacity_wait_s`` go on with fewer, down to
   ``min_nodes`` (elastic resume: the trainer keeps the global batch), give up after
   ``capacity_timeout_s``;
2. **launch**: ranks from the group's InService instances (:func:`~trainer.launch.group.launch_nodes`),
   one SSM command per instance;
3. **follow**, every ``poll_s``:
   - the run's status says converged/finished → end (success);
   - ``invoke stop`` (the run's stop marker) → SIGTERM, the trainer commits, end;
   - ``run.max_hours`` / ``run.max_dollars`` reached, or the global step has not moved for
     ``run.stall_timeout_minutes`` → stop gracefully, end (failed, with the reason);
   - an instance of the attempt is gone (spot reclaim: the group replaces it) → SIGTERM the
     survivors, back to 1; exit 75 / SSM time-outs → wait ``settle_s``, back to 1; any other exit
     → backoff, back to 1 (give up after ``max_failures`` in a row or ``max_restarts``);
   - running on fewer nodes than wanted and the group has them again → stop, relaunch at full
     size (grow back);
4. **end**: desired capacity 0 (AWS terminates every node), wait until none is left, cost report.

The ports (command runner, capacity, run view, clock: :mod:`.ports`) are protocols so tests drive
every path with fakes or moto and a fake clock; the real ones are SSM (:mod:`.ssm`), the Auto
Scaling group (:mod:`.group`) and :class:`artifacts.run.Run`. Nothing here launches or terminates an instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from artifacts.run import ExitCode, Status, verdict
from trainer.launch.cost import FleetCostReport, InstanceSpan, Price, fleet_cost_report
from trainer.launch.deadman import StallWatch, over_budget, preparing_bytes
from trainer.launch.group import launch_nodes
from trainer.launch.ports import (
    LIVE_STATES,
    RESUMABLE_COMMAND,
    TERMINAL_COMMAND,
    Capacity,
    Clock,
    CommandRunner,
    Invocation,
    Member,
    RunView,
)
from trainer.launch.ranks import RankAssignment, assign_ranks

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WatchPolicy:
    """Timings and bounds of the supervision loop (seconds)."""

    poll_s: float = 60.0
    max_failures: int = 3
    """Consecutive failed attempts (exit code not 0/75) before giving up."""
    max_restarts: int = 50
    """Relaunches of any kind (spot interruptions included) before giving up."""
    backoff_base_s: float = 60.0
    backoff_max_s: float = 1800.0
    settle_s: float = 150.0
    """After exit 75: a spot reclaim follows its notice within two minutes."""
    stop_grace_s: float = 600.0
    """Survivors get this long to commit and exit after SIGTERM before their command is cancelled."""
    min_nodes: int | None = None
    """``run.min_nodes``: the fewest nodes to go on with; None: every node."""
    capacity_wait_s: float = 600.0
    """How long to wait for the full node count before going on with fewer (keep it below the
    nodes' idle timeout, or idle nodes leave while we wait)."""
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


class _End(Exception):
    """Internal: the run is over (``state``), for ``reason``."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state, self.reason = state, reason


def download_command(run_uri: str, public_key: str | None = None) -> str:
    """The exact stage-2 command for the published model."""
    cmd = f"invoke download --src {run_uri.rstrip('/')}/final --dest ./model"
    return cmd + (f" --public-key {public_key}" if public_key else "")


@dataclass
class _Attempt:
    commands: dict[int, tuple[str, str]]  # rank -> (command id, instance id)
    results: dict[int, Invocation] = field(default_factory=dict)


class Watcher:
    """Supervises one run through capacity, launches, interruptions and failures to 0 nodes."""

    def __init__(
        self,
        *,
        run_uri: str,
        node_count: int,
        runner: CommandRunner,
        capacity: Capacity,
        run: RunView,
        clock: Clock,
        scripts_for: Callable[[list[RankAssignment]], dict[int, str]],
        stop_script: str,
        prices: Mapping[str, Price] | None = None,
        controller: tuple[str, Price] | None = None,
        policy: WatchPolicy | None = None,
        public_key: str | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.run_uri, self.wanted = run_uri, node_count
        self.runner, self.capacity, self.run, self.clock = runner, capacity, run, clock
        self.scripts_for, self.stop_script = scripts_for, stop_script
        self.prices = dict(prices or {})
        self.controller = controller
        self.policy = policy or WatchPolicy()
        self.public_key = public_key
        self.on_event = on_event
        self.min_nodes = min(self.policy.min_nodes or node_count, node_count)
        self.attempts = 0
        self.started = clock.now()
        self.stall = StallWatch(self.policy.stall_timeout_s)
        self._attempt: _Attempt | None = None
        self._members: dict[str, Member] = {}
        self._seen_end: dict[str, float] = {}

    # -- public ------------------------------------------------------------------------------
    def supervise(
        self,
        *,
        adopt: bool = False,
        resume: Mapping[int, tuple[str, str]] | None = None,
        attempts: int = 0,
        started: float | None = None,
    ) -> Outcome:
        """Run to the end.

        ``adopt``: a previous controller supervised this run (a restart). When its last launch
        (``resume``: rank → (command id, instance id)) still runs on live instances, follow it
        as it is — nothing is lost; otherwise stop whatever trainer still runs and relaunch.
        ``started``: when the run was submitted (the cost counts from there).
        """
        self.started = self.clock.now() if started is None else started
        failures = restarts = 0
        try:
            self.capacity.set_desired(self.wanted)
            resumed = False
            if adopt:
                resumed = bool(resume) and self._resume(dict(resume or {}), attempts)
                if not resumed:
                    self._stop_strays()
            while True:
                if not resumed:
                    self._launch(self._wait_for_nodes())
                resumed = False
                kind, detail = self._follow()
                self._check_end()  # the trainer may write its status just before it exits
                failures = failures + 1 if kind == "failed" else 0
                restarts += 1
                log.warning("attempt %d ended: %s", self.attempts, detail)
                if failures >= self.policy.max_failures:
                    raise _End("failed", f"{failures} consecutive failed attempts (last: {detail})")
                if restarts > self.policy.max_restarts:
                    raise _End("failed", f"{restarts - 1} relaunches, the bound (last: {detail})")
                self._stop_survivors()
                delay = {
                    "failed": self.policy.backoff(failures),
                    "interrupted": self.policy.settle_s,
                }.get(kind, 0.0)
                if delay:
                    self._pause(delay, "relaunching", {"why": detail})
        except _End as end:
            return self._end(end.state, end.reason)

    # -- steps -------------------------------------------------------------------------------
    def _emit(self, phase: str, detail: dict[str, Any] | None = None) -> None:
        if self.on_event is not None:
            self.on_event(phase, {"attempt": self.attempts, **(detail or {})})

    def _pause(self, seconds: float, phase: str, detail: dict[str, Any]) -> None:
        """Sleep in poll-sized steps, beating each time: nodes read a silent controller as dead."""
        end = self.clock.now() + seconds
        while (left := end - self.clock.now()) > 0:
            self._emit(phase, {**detail, "in_s": round(left)})
            self.clock.sleep(min(self.policy.poll_s, left))

    def _observe(self) -> list[Member]:
        members = self.capacity.members()
        now = self.clock.now()
        for m in members:
            self._members[m.instance_id] = m
            if m.state not in LIVE_STATES and m.end_time is None:
                self._seen_end.setdefault(m.instance_id, now)
        return members

    def _check_end(self) -> Status | None:
        """Raise :class:`_End` when the run is done, stopped or over a cap; else the status."""
        status = self.run.read_status()
        if status is not None and status.done:
            raise _End(str(status.state), f"run {status.state} at step {status.global_step}")
        if self.run.stop_requested():
            raise _End("stopped", "stopped on request (`invoke stop`)")
        now = self.clock.now()
        cost = self.cost_report().dollars if self.policy.max_dollars is not None else None
        cap = over_budget(
            now,
            started_at=self.started,
            dollars=cost,
            max_hours=self.policy.max_hours,
            max_dollars=self.policy.max_dollars,
        )
        if cap.act:
            raise _End("failed", cap.reason)
        return status

    def _wait_for_nodes(self) -> list[RankAssignment]:
        start = self.clock.now()
        while True:
            self._check_end()
            members = self._observe()
            nodes = launch_nodes(members, self.wanted)
            waited = self.clock.now() - start
            if len(nodes) >= self.wanted:
                return assign_ranks(nodes)
            if waited >= self.policy.capacity_wait_s and len(nodes) >= self.min_nodes:
                log.warning(
                    "continuing with %d of %d node(s) after %.0f min without capacity",
                    len(nodes), self.wanted, waited / 60,
                )  # fmt: skip
                return assign_ranks(nodes)
            if waited >= self.policy.capacity_timeout_s:
                raise _End(
                    "failed",
                    f"only {len(nodes)} of {self.wanted} node(s) (at least {self.min_nodes} "
                    f"needed) after {waited / 3600:.1f} h waiting for capacity",
                )
            if self.capacity.desired() < self.wanted:
                self.capacity.set_desired(self.wanted)  # idle nodes may have left meanwhile
            self._emit("waiting-capacity", {"in_service": len(nodes), "wanted": self.wanted})
            self.clock.sleep(self.policy.poll_s)

    def _launch(self, assignments: list[RankAssignment]) -> None:
        scripts = self.scripts_for(assignments)
        self.attempts += 1
        commands = {}
        for a in assignments:
            cid = self.runner.send(
                a.instance_id, scripts[a.node_index], comment=f"twostage launch {self.attempts}"
            )
            commands[a.node_index] = (cid, a.instance_id)
        self._attempt = _Attempt(commands)
        self.stall.reset(self.clock.now())
        nodes = [a.instance_id for a in assignments]
        self._emit(
            "running",
            {"nodes": nodes, "rendezvous": assignments[0].private_ip, "commands": commands},
        )
        log.info(
            "attempt %d: launched on %d node(s), rendezvous %s",
            self.attempts, len(commands), assignments[0].private_ip,
        )  # fmt: skip

    def _follow(self) -> tuple[str, str]:
        """Poll until the attempt ends; (kind, detail) with kind lost|interrupted|failed|grow."""
        errors = 0
        while True:
            status = self._check_end()
            stall = self.stall.observe(
                self.clock.now(),
                status.global_step if status else None,
                data_bytes=preparing_bytes(status),
            )
            if stall.act:
                raise _End("failed", stall.reason)
            try:
                ended = self._check_attempt()
                errors = 0
            except Exception as err:  # noqa: BLE001
                # Keep supervising through transient AWS errors (throttling, a dropped
                # connection): the trainers on the nodes do not depend on this loop.
                errors += 1
                log.warning("poll %d/%d failed: %s", errors, self.policy.max_poll_errors, err)
                if errors >= self.policy.max_poll_errors:
                    raise _End("failed", f"{errors} polls in a row failed (last: {err})") from err
                ended = None
            if ended is not None:
                return ended
            self._emit("running", {"step": status.global_step if status else None})
            self.clock.sleep(self.policy.poll_s)

    def _check_attempt(self) -> tuple[str, str] | None:
        attempt = self._attempt
        assert attempt is not None
        members = {m.instance_id: m for m in self._observe()}
        for rank, (cid, iid) in sorted(attempt.commands.items()):
            m = members.get(iid)
            if m is None or m.state not in LIVE_STATES or m.lifecycle.startswith("Terminat"):
                state = m.state if m else "gone"
                return "lost", f"node {rank} ({iid}) is {state}"
            if rank not in attempt.results:
                inv = self.runner.poll(cid, iid)
                if inv.status in TERMINAL_COMMAND:
                    attempt.results[rank] = inv
        results = attempt.results
        for rank, inv in sorted(results.items()):
            code = verdict(inv.exit_code, None) if inv.exit_code is not None else None
            if code is ExitCode.INTERRUPTED or inv.status in RESUMABLE_COMMAND:
                return "interrupted", f"node {rank} exited {inv.exit_code} ({inv.status}): resume"
        for rank, inv in sorted(results.items()):
            if inv.exit_code != ExitCode.OK or inv.status != "Success":
                return "failed", f"node {rank} failed with exit code {inv.exit_code} ({inv.status})"
        if len(results) == len(attempt.commands):
            st = self.run.read_status()
            return (
                "failed",
                f"every node exited 0 but the run's status says {st.state if st else 'missing'}",
            )
        if len(attempt.commands) < self.wanted:
            usable = launch_nodes(list(members.values()), self.wanted)
            if len(usable) >= self.wanted:
                return "grow", f"{len(usable)} nodes InService again: relaunch on all {self.wanted}"
            if self.capacity.desired() < self.wanted:
                self.capacity.set_desired(self.wanted)  # an idle node left meanwhile: ask again
        return None

    def _running_commands(self) -> dict[int, tuple[str, str]]:
        attempt = self._attempt
        if attempt is None:
            return {}
        live = {m.instance_id for m in self._observe() if m.state in LIVE_STATES}
        return {
            r: (cid, iid)
            for r, (cid, iid) in attempt.commands.items()
            if r not in attempt.results and iid in live
        }

    def _signal_and_wait(self, running: dict[int, tuple[str, str]]) -> None:
        """SIGTERM (they commit and exit 75); cancel what outlives the grace."""
        for _, iid in running.values():
            self.runner.send(iid, self.stop_script, comment="twostage stop")
        deadline = self.clock.now() + self.policy.stop_grace_s
        while running and self.clock.now() < deadline:
            self._emit("stopping", {"waiting_for": len(running)})
            self.clock.sleep(min(self.policy.poll_s, 30.0))
            for r, (cid, iid) in list(running.items()):
                if self.runner.poll(cid, iid).status in TERMINAL_COMMAND:
                    del running[r]
        for r, (cid, _) in running.items():
            log.warning(
                "node %d did not exit within %.0f s: cancelling", r, self.policy.stop_grace_s
            )
            self.runner.cancel(cid)

    def _resume(self, commands: dict[int, tuple[str, str]], attempts: int) -> bool:
        """Take over a launch that still runs (a restarted controller); False if it does not."""
        live = {m.instance_id for m in self._observe() if m.state == "running"}
        for cid, iid in commands.values():
            if iid not in live or self.runner.poll(cid, iid).status in TERMINAL_COMMAND:
                return False
        self._attempt = _Attempt(commands)
        self.attempts = attempts
        self.stall.reset(self.clock.now())
        log.info("resumed following attempt %d on %d node(s)", attempts, len(commands))
        self._emit("running", {"resumed": True})
        return True

    def _stop_survivors(self) -> None:
        self._signal_and_wait(self._running_commands())

    def _stop_strays(self) -> None:
        """A controller restarted mid-run: whatever trainer still runs commits and exits."""
        live = [m for m in self._observe() if m.state == "running"]
        for m in live:
            self.runner.send(m.instance_id, self.stop_script, comment="twostage stop (adopt)")
        if live:
            self._pause(min(self.policy.stop_grace_s, 120.0), "stopping", {"adopted": len(live)})

    # -- the end -------------------------------------------------------------------------------
    def cost_report(self) -> FleetCostReport:
        """Node-hours and dollars since the run started, per instance type (controller included)."""
        now = self.clock.now()
        spans = []
        for m in self._members.values():
            end = m.end_time if m.end_time is not None else self._seen_end.get(m.instance_id)
            if end is not None and end <= self.started:
                continue  # ended before this run
            spans.append(
                InstanceSpan(m.instance_id, max(m.launch_time, self.started), end, m.instance_type)
            )
        ctl = None
        if self.controller is not None:
            ctl = (self.controller[0], (now - self.started) / 3600.0, self.controller[1])
        return fleet_cost_report(spans, now=now, prices=self.prices, controller=ctl)

    def _end(self, state: str, reason: str) -> Outcome:
        done = state in ("converged", "finished")
        if not done:
            try:
                self._stop_survivors()  # commit a checkpoint before the nodes go
            except Exception as err:  # noqa: BLE001 - scaling to 0 below must happen regardless
                log.warning("could not stop the trainers gracefully: %s", err)
        self._emit("scaling-to-zero", {"why": reason})
        left = self._drain()
        if done:
            message = f"{reason}; model at {self.run_uri.rstrip('/')}/final"
        elif state == "stopped":
            message = (
                f"{reason}: the trainer committed a checkpoint; `invoke pretrain` with the same "
                "--run resumes it"
            )
        else:
            message = (
                f"gave up: {reason}. Committed checkpoints stay in {self.run_uri}; see "
                "`invoke logs`, fix the cause, then `invoke pretrain` with the same --run resumes"
            )
        return Outcome(
            state=state,
            message=message,
            attempts=self.attempts,
            cost=self.cost_report(),
            download_command=download_command(self.run_uri, self.public_key) if done else None,
            left_running=left,
        )

    def _drain(self) -> list[str]:
        """Desired capacity 0, then wait until AWS has terminated every node."""
        for tries in range(self.policy.max_poll_errors):
            try:
                self.capacity.set_desired(0)
                break
            except Exception as err:  # noqa: BLE001 - retried: this is what stops the billing
                log.warning("scale to 0 failed (%d): %s", tries + 1, err)
                self.clock.sleep(self.policy.poll_s)
        deadline = self.clock.now() + self.policy.drain_timeout_s
        while True:
            live = [m.instance_id for m in self._observe() if m.state in LIVE_STATES]
            if not live or self.clock.now() >= deadline:
                return live
            self._emit("scaling-to-zero", {"left": len(live)})
            self.clock.sleep(min(self.policy.poll_s, 30.0))


def spans_of(members: Sequence[Member], since: float) -> list[InstanceSpan]:
    """Cost spans of the members that lived after ``since`` (for `invoke status`)."""
    return [
        InstanceSpan(m.instance_id, max(m.launch_time, since), m.end_time, m.instance_type)
        for m in members
        if m.end_time is None or m.end_time > since
    ]
