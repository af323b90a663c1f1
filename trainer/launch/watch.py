"""The watch / recovery state machine of a remote run, over injected ports.

One :class:`Watcher` follows a launched run until it is over:

- **converged / finished** (``STATUS.json`` in the run prefix says so): terminate every node of the
  cluster (zero idle spend), report node-hours and dollars, print the ``invoke download`` command;
- **a node lost** (its instance is shutting down / terminated, e.g. a spot reclaim): stop the
  survivors (SIGTERM → they commit and exit), wait for capacity — replace the node through the
  :class:`Fleet` port, bounded by ``capacity_timeout_s`` — and relaunch; the trainer resumes from
  the last committed checkpoint by itself;
- **exit 75** ("interrupted, resume me"): wait ``settle_s`` for a possible reclaim, replace what
  is gone, relaunch; ``TimedOut``/``Cancelled`` SSM commands count the same;
- **failure** (any other exit code): relaunch after an exponential backoff; after
  ``max_failures`` consecutive failures (or ``max_restarts`` relaunches in all) give up, terminate
  the nodes and say why;
- **stop requested** (``invoke stop``) and the trainer exited: end without relaunching.

The ports (command runner, fleet, run state, clock) are protocols so tests drive every path with
fakes and a fake clock; the real ones are SSM (:mod:`.ssm`), EC2 (:mod:`.fleet`) and the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from artifacts.run import ExitCode, Status, verdict
from trainer.launch import LaunchError
from trainer.launch.cost import CostReport, InstanceSpan
from trainer.launch.ranks import Node, RankAssignment, assign_ranks

log = logging.getLogger(__name__)

ENDED_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
LIVE_STATES = frozenset({"pending", "running"})
TERMINAL_COMMAND = frozenset(
    {"Success", "Failed", "Cancelled", "TimedOut", "Undeliverable", "Terminated",
     "DeliveryTimedOut", "ExecutionTimedOut"}
)  # fmt: skip
RESUMABLE_COMMAND = frozenset({"Cancelled", "TimedOut", "DeliveryTimedOut", "ExecutionTimedOut"})


@dataclass(frozen=True)
class NodeState:
    """One instance of the cluster as EC2 reports it."""

    index: int
    instance_id: str
    private_ip: str
    state: str
    launch_time: float
    end_time: float | None = None
    ssm_online: bool | None = None
    """None: unknown (no SSM inventory available)."""


@dataclass(frozen=True)
class Invocation:
    """One node's command as SSM reports it; ``exit_code`` is None until it ends."""

    status: str
    exit_code: int | None = None


class CommandRunner(Protocol):
    def send(self, node_index: int, script: str, *, comment: str) -> str:
        """Run ``script`` on the node with that index (tag target); return the command id."""

    def poll(self, command_id: str, instance_id: str) -> Invocation: ...

    def cancel(self, command_id: str) -> None: ...


class Fleet(Protocol):
    def nodes(self) -> list[NodeState]:
        """Every instance of the cluster, live and ended (several per index after a replacement)."""

    def replace(self, index: int) -> NodeState | None:
        """Launch a new node for ``index``; None when there is no capacity right now."""

    def terminate_all(self) -> list[str]:
        """Terminate every live node of the cluster; return the instance ids."""


class RunView(Protocol):
    """What the watcher reads of the run (:class:`artifacts.run.Run` is the real one)."""

    def read_status(self) -> Status | None:
        """The run's status (None before the trainer wrote it, or while it is unreadable)."""

    def stop_requested(self) -> bool: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class WatchPolicy:
    """Timings and bounds of the watch loop (seconds)."""

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
    """Survivors of a lost node get this long to commit and exit before their command is cancelled."""
    capacity_timeout_s: float = 6 * 3600.0
    ready_timeout_s: float = 1800.0
    """A replacement node must be running and SSM-online within this."""
    terminate_on_give_up: bool = True
    max_poll_errors: int = 10
    """Consecutive failed polls (AWS unreachable) before giving up."""

    def backoff(self, failures: int) -> float:
        """Exponential backoff after the n-th consecutive failure (n ≥ 1), capped."""
        return min(self.backoff_base_s * 2 ** max(failures - 1, 0), self.backoff_max_s)


@dataclass
class Outcome:
    """How the watch ended; ``lines()`` is what the user reads."""

    state: str
    """converged | finished | stopped | failed."""
    message: str
    attempts: int
    cost: CostReport | None = None
    terminated: list[str] = field(default_factory=list)
    download_command: str | None = None

    def lines(self) -> list[str]:
        out = [self.message]
        if self.terminated:
            out.append(f"terminated {len(self.terminated)} node(s): {', '.join(self.terminated)}")
        if self.cost is not None:
            out += self.cost.lines()
        if self.download_command:
            out.append(f"stage 2: {self.download_command}")
        return out


class GiveUp(Exception):
    """Internal: the watcher stops trying (the message says why)."""


def current_nodes(nodes: Sequence[NodeState]) -> dict[int, NodeState]:
    """Per index, the live instance if there is one, else the most recently launched ended one."""
    best: dict[int, NodeState] = {}
    for n in nodes:
        cur = best.get(n.index)
        rank = (n.state in LIVE_STATES, n.launch_time)
        if cur is None or rank > (cur.state in LIVE_STATES, cur.launch_time):
            best[n.index] = n
    return best


def download_command(run_uri: str, public_key: str | None = None) -> str:
    """The exact stage-2 command for the published model."""
    cmd = f"invoke download --src {run_uri.rstrip('/')}/final --dest ./model"
    return cmd + (f" --public-key {public_key}" if public_key else "")


@dataclass
class _Attempt:
    commands: dict[int, tuple[str, str]]  # index -> (command id, instance id)
    results: dict[int, Invocation] = field(default_factory=dict)


class Watcher:
    """Follows one run through launch, interruptions and failures to its end."""

    def __init__(
        self,
        *,
        run_uri: str,
        node_count: int,
        runner: CommandRunner,
        fleet: Fleet,
        run_state: RunView,
        clock: Clock,
        scripts_for: Callable[[list[RankAssignment]], dict[int, str]],
        stop_script: str,
        cost_for: Callable[[list[InstanceSpan], float], CostReport] | None = None,
        policy: WatchPolicy | None = None,
        public_key: str | None = None,
        on_launch: Callable[[dict[int, tuple[str, str]]], None] | None = None,
    ) -> None:
        self.run_uri = run_uri
        self.node_count = node_count
        self.runner, self.fleet, self.run_state, self.clock = runner, fleet, run_state, clock
        self.scripts_for, self.stop_script, self.cost_for = scripts_for, stop_script, cost_for
        self.policy = policy or WatchPolicy()
        self.public_key = public_key
        self.on_launch = on_launch
        self.attempts = 0
        self._spans: dict[str, InstanceSpan] = {}
        self._attempt: _Attempt | None = None
        self._by_id: dict[str, NodeState] = {}

    # -- public ------------------------------------------------------------------------------
    def launch(self) -> dict[int, str]:
        """Send the per-node command to every node; returns index → command id."""
        nodes = self._live_nodes()
        assignments = assign_ranks(
            [Node(n.index, n.instance_id, n.private_ip) for n in nodes.values()]
        )
        scripts = self.scripts_for(assignments)
        self.attempts += 1
        commands = {}
        for a in assignments:
            cid = self.runner.send(
                a.node_index, scripts[a.node_index], comment=f"twostage launch {self.attempts}"
            )
            commands[a.node_index] = (cid, a.instance_id)
        self._attempt = _Attempt(commands)
        if self.on_launch is not None:
            self.on_launch(dict(commands))
        log.info(
            "attempt %d: launched on %d node(s), rendezvous %s",
            self.attempts, len(commands), assignments[0].private_ip,
        )  # fmt: skip
        return {i: c for i, (c, _) in commands.items()}

    def watch(self, *, launch: bool = True) -> Outcome:
        """Launch (unless already launched) and follow the run to its end."""
        failures = restarts = poll_errors = 0
        try:
            if launch or self._attempt is None:
                self.launch()
            while True:
                if self._done():
                    return self._finish()
                try:
                    ended = self._check_attempt()
                    poll_errors = 0
                except Exception as err:  # noqa: BLE001
                    # Keep watching through transient AWS/network errors (throttling, a dropped
                    # connection): the run on the nodes does not depend on this process.
                    poll_errors += 1
                    log.warning(
                        "poll %d/%d failed: %s", poll_errors, self.policy.max_poll_errors, err
                    )
                    if poll_errors >= self.policy.max_poll_errors:
                        raise GiveUp(f"{poll_errors} polls in a row failed (last: {err})") from err
                    self.clock.sleep(self.policy.poll_s)
                    continue
                if ended is None:
                    self.clock.sleep(self.policy.poll_s)
                    continue
                kind, detail = ended
                if self._done():  # the trainer may write STATUS.json just before it exits
                    return self._finish()
                if self.run_state.stop_requested():
                    return self._stopped(detail)
                failures = failures + 1 if kind == "failed" else 0
                restarts += 1
                log.warning("attempt %d ended: %s", self.attempts, detail)
                if failures >= self.policy.max_failures:
                    raise GiveUp(f"{failures} consecutive failed attempts (last: {detail})")
                if restarts > self.policy.max_restarts:
                    raise GiveUp(f"{restarts - 1} relaunches, the bound (last: {detail})")
                self._stop_survivors()
                delay = {
                    "failed": self.policy.backoff(failures),
                    "interrupted": self.policy.settle_s,
                    "lost": 0.0,
                }[kind]
                if delay:
                    log.info("relaunch %d in %.0f s (%s)", restarts, delay, kind)
                    self.clock.sleep(delay)
                self._ensure_capacity()
                self.launch()
        except (GiveUp, LaunchError) as err:
            return self._give_up(str(err))

    # -- steps -------------------------------------------------------------------------------
    def _observe(self) -> dict[int, NodeState]:
        """Poll the fleet: remember every instance's span (for the cost), return current nodes."""
        nodes = self.fleet.nodes()
        self._by_id = {n.instance_id: n for n in nodes}
        now = self.clock.now()
        for n in nodes:
            old = self._spans.get(n.instance_id)
            end = n.end_time
            if end is None and n.state in ENDED_STATES:
                end = old.end if old and old.end is not None else now
            self._spans[n.instance_id] = InstanceSpan(n.instance_id, n.launch_time, end)
        return current_nodes(nodes)

    def _live_nodes(self) -> dict[int, NodeState]:
        nodes = self._observe()
        missing = [
            i for i in range(self.node_count) if nodes.get(i) is None or nodes[i].state != "running"
        ]
        if missing:
            raise LaunchError(f"node(s) {missing} of cluster are not running: run `pulumi up`")
        return {i: nodes[i] for i in range(self.node_count)}

    def _done(self) -> bool:
        status = self.run_state.read_status()
        return status is not None and status.done

    def _check_attempt(self) -> tuple[str, str] | None:
        """None while the attempt runs; else (kind, detail) with kind lost | interrupted | failed."""
        attempt = self._attempt
        assert attempt is not None
        self._observe()
        by_id = self._by_id
        for index, (cid, iid) in sorted(attempt.commands.items()):
            node = by_id.get(iid)
            if node is None or node.state in ENDED_STATES:
                state = node.state if node else "gone"
                return "lost", f"node {index} ({iid}) is {state}"
            if index not in attempt.results:
                inv = self.runner.poll(cid, iid)
                if inv.status in TERMINAL_COMMAND:
                    attempt.results[index] = inv
        results = attempt.results
        for index, inv in sorted(results.items()):
            resumable = inv.exit_code is not None and (
                verdict(inv.exit_code, None) is ExitCode.INTERRUPTED
            )
            if resumable or inv.status in RESUMABLE_COMMAND:
                return "interrupted", f"node {index} exited {inv.exit_code} ({inv.status}): resume"
        for index, inv in sorted(results.items()):
            if inv.exit_code != 0 or inv.status != "Success":
                return (
                    "failed",
                    f"node {index} failed with exit code {inv.exit_code} ({inv.status})",
                )
        if len(results) == len(attempt.commands):
            st = self.run_state.read_status()
            status = st.state if st is not None else "missing"
            return "failed", f"every node exited 0 but the run's status says {status}"
        return None

    def _stop_survivors(self) -> None:
        """SIGTERM to nodes whose command still runs; cancel what outlives the grace."""
        attempt = self._attempt
        assert attempt is not None
        nodes = self._observe()
        running = {
            i: (cid, iid)
            for i, (cid, iid) in attempt.commands.items()
            if i not in attempt.results and nodes.get(i) and nodes[i].instance_id == iid
            and nodes[i].state in LIVE_STATES
        }  # fmt: skip
        if not running:
            return
        for i in running:
            self.runner.send(i, self.stop_script, comment="twostage stop survivors")
        deadline = self.clock.now() + self.policy.stop_grace_s
        while running and self.clock.now() < deadline:
            self.clock.sleep(min(self.policy.poll_s, 30.0))
            for i, (cid, iid) in list(running.items()):
                if self.runner.poll(cid, iid).status in TERMINAL_COMMAND:
                    del running[i]
        for i, (cid, _) in running.items():
            log.warning(
                "node %d did not exit within %.0f s of SIGTERM: cancelling",
                i,
                self.policy.stop_grace_s,
            )
            self.runner.cancel(cid)

    def _ensure_capacity(self) -> None:
        """Replace every lost node (waiting for capacity), then wait until all are ready."""
        start = self.clock.now()
        tries = 0
        while True:
            nodes = self._observe()
            lost = [
                i
                for i in range(self.node_count)
                if nodes.get(i) is None or nodes[i].state in ENDED_STATES
            ]
            if not lost:
                break
            for i in lost:
                new = self.fleet.replace(i)
                if new is not None:
                    log.info("node %d replaced by %s", i, new.instance_id)
            if all(
                n is not None and n.state not in ENDED_STATES
                for n in (self._observe().get(i) for i in lost)
            ):
                break
            tries += 1
            waited = self.clock.now() - start
            if waited >= self.policy.capacity_timeout_s:
                raise GiveUp(f"no capacity to replace node(s) {lost} after {waited / 3600:.1f} h")
            delay = min(60.0 * 2 ** (tries - 1), 600.0)
            log.warning("no capacity for node(s) %s yet; retrying in %.0f s", lost, delay)
            self.clock.sleep(delay)
        deadline = self.clock.now() + self.policy.ready_timeout_s
        while True:
            nodes = self._observe()
            waiting = [
                i for i in range(self.node_count)
                if nodes.get(i) is None or nodes[i].state != "running" or nodes[i].ssm_online is False
            ]  # fmt: skip
            if not waiting:
                return
            if self.clock.now() >= deadline:
                raise GiveUp(f"node(s) {waiting} not running and SSM-online in time")
            self.clock.sleep(min(self.policy.poll_s, 30.0))

    # -- endings -----------------------------------------------------------------------------
    def _terminate(self) -> list[str]:
        ids = self.fleet.terminate_all()
        now = self.clock.now()
        for iid in ids:
            span = self._spans.get(iid)
            if span is not None and span.end is None:
                self._spans[iid] = InstanceSpan(iid, span.start, now)
        return ids

    def _report(self) -> CostReport | None:
        self._observe()
        if self.cost_for is None:
            return None
        return self.cost_for(list(self._spans.values()), self.clock.now())

    def _finish(self) -> Outcome:
        status = self.run_state.read_status()
        terminated = self._terminate()
        state = str(status.state) if status else "finished"
        best = status.best_val_loss if status else None
        msg = (
            f"run {state} at step {status.global_step if status else '?'}"
            + (f", best val loss {best:.4f}" if isinstance(best, int | float) else "")
            + f"; model at {self.run_uri.rstrip('/')}/final"
        )
        return Outcome(
            state=state,
            message=msg,
            attempts=self.attempts,
            cost=self._report(),
            terminated=terminated,
            download_command=download_command(self.run_uri, self.public_key),
        )

    def _stopped(self, detail: str) -> Outcome:
        return Outcome(
            state="stopped",
            message=f"run stopped on request ({detail}); rerun `invoke pretrain` with the same "
            "--run to resume from the last committed checkpoint",
            attempts=self.attempts,
            cost=self._report(),
        )

    def _give_up(self, reason: str) -> Outcome:
        terminated = self._terminate() if self.policy.terminate_on_give_up else []
        return Outcome(
            state="failed",
            message=f"gave up: {reason}. Committed checkpoints stay in {self.run_uri}; see "
            "`invoke logs`, fix the cause, `pulumi up` to restore the nodes, then rerun "
            "`invoke pretrain` with the same --run to resume",
            attempts=self.attempts,
            cost=self._report(),
            terminated=terminated,
        )
