"""The supervision state machine of one run, over injected ports (the controller runs it).

One :class:`Watcher` takes a run from "submitted" to "nodes at 0":

1. **capacity**: set the desired capacity to the run's node count and wait until that many are
   InService, or go on with fewer (down to ``min_nodes``) when that is cheaper than waiting
   (:mod:`.sizing`, logged with its numbers); give up after ``capacity_timeout_s``;
2. **launch**: ranks from the group's InService instances (:func:`~trainer.launch.group.launch_nodes`),
   one SSM command per instance;
3. **follow**, every ``poll_s``:
   - the run's status says converged/finished → end (success);
   - ``invoke stop`` (the run's stop marker) → SIGTERM, the trainer commits, end;
   - ``run.max_hours`` / ``run.max_dollars`` reached, or the global step has not moved for
     ``run.stall_timeout_minutes`` → stop gracefully, end (failed, with the reason);
   - an instance of the attempt is gone (spot reclaim: the group replaces it) → SIGTERM the
     survivors, back to 1; exit 75 / SSM time-outs → wait for the notice's reclaim
     (:func:`~trainer.launch.recovery.settle_after_exit`), back to 1; any other exit → backoff,
     back to 1 (give up after the same failure twice without progress, ``max_failures`` in a
     row or ``max_restarts``);
   - running on fewer nodes than wanted and the group has them again → stop, relaunch at full
     size (grow back, :mod:`.sizing`);
4. **end**: desired capacity 0 (AWS terminates every node), wait until none is left, cost report
   (:mod:`.run_end`, which also holds the end conditions every poll checks).

The ports (command runner, capacity, run view, clock: :mod:`.ports`) are protocols so tests drive
every path with fakes or moto and a fake clock; the real ones are SSM (:mod:`.ssm`), the Auto
Scaling group (:mod:`.group`) and :class:`artifacts.run.Run`. Nothing here launches or terminates an instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from artifacts.run import Status
from trainer.launch.attempt import Attempt, record_ending, stop_commands
from trainer.launch.cost import FleetCostReport, Price
from trainer.launch.deadman import StallWatch, preparing_bytes
from trainer.launch.fleet import Fleet
from trainer.launch.policy import Outcome, WatchPolicy, download_command, end_message
from trainer.launch.ports import (
    LIVE_STATES,
    TERMINAL_COMMAND,
    Capacity,
    Clock,
    CommandRunner,
    RunView,
)
from trainer.launch.ranks import RankAssignment
from trainer.launch.recovery import Recovery, RepeatGuard
from trainer.launch.run_end import DONE_STATES, RunEnd, check_end, wind_down
from trainer.launch.sizing import Sizing

log = logging.getLogger(__name__)


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
        self.fleet = Fleet(capacity, clock)
        self._attempt: Attempt | None = None
        self.recovery = Recovery(RepeatGuard())
        self.sizing = Sizing(
            wanted=node_count, min_nodes=self.min_nodes, capacity=capacity, fleet=self.fleet,
            clock=clock, policy=self.policy, recovery=self.recovery,
        )  # fmt: skip

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
                    self._launch(self.sizing.wait(self._check_end, self._emit))
                resumed = False
                kind, detail = self._follow()
                st = self._check_end()  # the trainer may write its status just before it exits
                record_ending(self.run, kind, f"attempt {self.attempts}: {detail}")
                repeated, settle = self.recovery.after(
                    kind, detail, st, self.clock.now(), self.policy
                )
                if repeated:
                    raise RunEnd("failed", repeated)
                failures = failures + 1 if kind == "failed" else 0
                restarts += 1
                log.warning("attempt %d ended: %s", self.attempts, detail)
                if failures >= self.policy.max_failures:
                    raise RunEnd(
                        "failed", f"{failures} consecutive failed attempts (last: {detail})"
                    )
                if restarts > self.policy.max_restarts:
                    raise RunEnd("failed", f"{restarts - 1} relaunches, the bound (last: {detail})")
                self._stop_survivors()
                delay = self.policy.backoff(failures) if kind == "failed" else settle
                if delay:
                    self._pause(delay, "relaunching", {"why": detail})
        except RunEnd as end:
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

    def _check_end(self) -> Status | None:
        """Raise :class:`RunEnd` when the run is done, stopped or over a cap; else the status."""
        return check_end(
            self.run, clock=self.clock, started=self.started, cost=self.cost_report,
            policy=self.policy,
        )  # fmt: skip

    def _launch(self, assignments: list[RankAssignment]) -> None:
        scripts = self.scripts_for(assignments)
        self.attempts += 1
        commands = {}
        for a in assignments:
            cid = self.runner.send(
                a.instance_id, scripts[a.node_index], comment=f"twostage launch {self.attempts}"
            )
            commands[a.node_index] = (cid, a.instance_id)
        self._attempt = Attempt(commands)
        self.stall.reset(self.clock.now())
        self.recovery.launched(self.run.read_status(), self.clock.now())
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
                raise RunEnd("failed", stall.reason)
            if (took := self.recovery.progress(status, self.clock.now())) is not None:
                log.info("attempt %d: training again %.0f s after the launch", self.attempts, took)
            try:
                ended = self._check_attempt()
                errors = 0
            except Exception as err:  # noqa: BLE001
                # Keep supervising through transient AWS errors (throttling, a dropped
                # connection): the trainers on the nodes do not depend on this loop.
                errors += 1
                log.warning("poll %d/%d failed: %s", errors, self.policy.max_poll_errors, err)
                if errors >= self.policy.max_poll_errors:
                    raise RunEnd("failed", f"{errors} polls in a row failed (last: {err})") from err
                ended = None
            if ended is not None:
                return ended
            self._emit("running", {"step": status.global_step if status else None})
            self.clock.sleep(self.policy.poll_s)

    def _check_attempt(self) -> tuple[str, str] | None:
        attempt = self._attempt
        assert attempt is not None
        members = {m.instance_id: m for m in self.fleet.observe()}
        ended = attempt.check(self.runner, members)
        if ended is not None:
            return ended
        if attempt.all_ended:
            st = self.run.read_status()
            return (
                "failed",
                f"every node exited 0 but the run's status says {st.state if st else 'missing'}",
            )
        return self.sizing.grow_back(list(members.values()), len(attempt.commands))

    def _running_commands(self) -> dict[int, tuple[str, str]]:
        attempt = self._attempt
        if attempt is None:
            return {}
        return attempt.running(
            {m.instance_id for m in self.fleet.observe() if m.state in LIVE_STATES}
        )

    def _resume(self, commands: dict[int, tuple[str, str]], attempts: int) -> bool:
        """Take over a launch that still runs (a restarted controller); False if it does not."""
        live = {m.instance_id for m in self.fleet.observe() if m.state == "running"}
        for cid, iid in commands.values():
            if iid not in live or self.runner.poll(cid, iid).status in TERMINAL_COMMAND:
                return False
        self._attempt = Attempt(commands)
        self.attempts = attempts
        self.stall.reset(self.clock.now())
        log.info("resumed following attempt %d on %d node(s)", attempts, len(commands))
        self._emit("running", {"resumed": True})
        return True

    def _stop_survivors(self) -> None:
        """SIGTERM the trainers still running (they commit and exit 75); cancel what outlives it."""
        stop_commands(
            self.runner,
            self._running_commands(),
            stop_script=self.stop_script,
            clock=self.clock,
            grace_s=self.policy.stop_grace_s,
            poll_s=self.policy.poll_s,
            on_wait=lambda n: self._emit("stopping", {"waiting_for": n}),
        )

    def _stop_strays(self) -> None:
        """A controller restarted mid-run: whatever trainer still runs commits and exits."""
        live = [m for m in self.fleet.observe() if m.state == "running"]
        for m in live:
            self.runner.send(m.instance_id, self.stop_script, comment="twostage stop (adopt)")
        if live:
            self._pause(min(self.policy.stop_grace_s, 120.0), "stopping", {"adopted": len(live)})

    # -- the end -------------------------------------------------------------------------------
    def cost_report(self) -> FleetCostReport:
        """Node-hours and dollars since the run started, per instance type (controller included)."""
        return self.fleet.cost_report(
            started=self.started, prices=self.prices, controller=self.controller
        )

    def _end(self, state: str, reason: str) -> Outcome:
        left = wind_down(
            state, reason, run=self.run, fleet=self.fleet, policy=self.policy,
            stop_survivors=self._stop_survivors, emit=self._emit,
        )  # fmt: skip
        done = state in DONE_STATES
        return Outcome(
            state=state,
            message=end_message(state, reason, self.run_uri),
            attempts=self.attempts,
            cost=self.cost_report(),
            download_command=download_command(self.run_uri, self.public_key) if done else None,
            left_running=left,
        )
