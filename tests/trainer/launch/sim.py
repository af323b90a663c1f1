"""A simulated cluster for end-to-end supervision tests: moto's Auto Scaling group and S3, a fake
clock, a fake SSM runner whose "trainers" advance the global step and converge, node agents.

moto's group really launches the nodes, replaces a terminated one and removes them all at
desired capacity 0; the controller and the node agents are the real classes. Only SSM is faked
(moto's send_command executes nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import boto3

from artifacts.run import Run, RunState, Status
from artifacts.store import open_store
from trainer.launch.control import ControlPlane
from trainer.launch.controller import ClusterInfo, Controller
from trainer.launch.cost import Price
from trainer.launch.group import Group
from trainer.launch.node_agent import NodeAgent, leave_group
from trainer.launch.policy import WatchPolicy
from trainer.launch.ports import Invocation

from .conftest import live_instances
from .fakes import FakeClock

MIN = 60.0


class ControllerKilled(Exception):
    """Raised from a clock hook: the controller process dies mid-run."""


@dataclass
class SimTrainers:
    """SSM Run Command on the simulated nodes: each launch is a trainer that makes one step a
    minute (all ranks together) and converges at ``converge_at_step``; SIGTERM → commit, 75."""

    clock: FakeClock
    converge_at_step: int = 120
    stalled: bool = False
    """The collective hangs: the trainers stay up but the step stops moving."""
    step: int = 0
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    """(instance id, comment, command id)."""
    results: dict[str, Invocation] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)
    """command id → instance id of every trainer still running."""
    run_uri: str = ""
    ended_at: dict[str, float] = field(default_factory=dict)
    """instance id → when its last trainer exited (the node agents' idle clock)."""

    # -- the CommandRunner port ----------------------------------------------------------------
    def send(self, instance_id: str, script: str, *, comment: str) -> str:
        cid = f"cmd-{len(self.sent)}"
        self.sent.append((instance_id, comment, cid))
        if "stop" in comment:
            for c, iid in list(self.running.items()):
                if iid == instance_id:
                    self._end(c, Invocation("Failed", 75))
            self.results[cid] = Invocation("Success", 0)
        else:
            self.running[cid] = instance_id
        return cid

    def poll(self, command_id: str, instance_id: str) -> Invocation:
        return self.results.get(command_id, Invocation("InProgress"))

    def cancel(self, command_id: str) -> None:
        if command_id in self.running:
            self._end(command_id, Invocation("Cancelled"))

    # -- the simulation --------------------------------------------------------------------------
    def _end(self, cid: str, inv: Invocation) -> None:
        iid = self.running.pop(cid)
        self.results[cid] = inv
        self.ended_at[iid] = self.clock.now()

    def launches(self) -> list[tuple[str, str, str]]:
        return [s for s in self.sent if "launch" in s[1]]

    def attempts(self) -> int:
        return len({s[1] for s in self.launches()})

    def is_running(self, instance_id: str) -> bool:
        return instance_id in self.running.values()

    def lose(self, instance_id: str) -> None:
        """The instance is gone: its trainer dies with it; the peers' collective fails (exit 1)."""
        for cid, iid in list(self.running.items()):
            if iid == instance_id:
                self._end(cid, Invocation("Failed", None))

    def tick(self, run: Run, live: set[str]) -> None:
        """One simulated minute: the trainers train (if all of the attempt's nodes live)."""
        for cid, iid in list(self.running.items()):
            if iid not in live:
                self._end(cid, Invocation("Failed", None))
        if not self.running or self.stalled:
            return
        self.step += 1
        if self.step >= self.converge_at_step:
            run.write_status(
                Status(state=RunState.CONVERGED, global_step=self.step, converged=True)
            )
            for cid in list(self.running):
                self._end(cid, Invocation("Success", 0))
        elif self.step % 5 == 0:
            run.write_status(Status(state=RunState.RUNNING, global_step=self.step))


class SimLaunches:
    """The node agent's view of one simulated node's launches."""

    def __init__(self, sim: SimTrainers, instance_id: str, boot: float) -> None:
        self.sim, self.iid, self.boot = sim, instance_id, boot

    def running(self) -> bool:
        return self.sim.is_running(self.iid)

    def idle_since(self, boot_time: float) -> float:
        return max(boot_time, self.sim.ended_at.get(self.iid, boot_time))

    def idle_timeout_s(self) -> float:
        return 15 * MIN


class World:
    """One simulated cluster (built from the ``cluster`` fixture's builder)."""

    def __init__(self, build: Any, n: int = 2, *, converge_at_step: int = 120, **policy: Any):
        self.c = build(n)
        self.n = n
        # moto stamps launch times with the wall clock: the fake clock starts there too.
        self.clock = FakeClock(start=time.time())
        o = self.c["outputs"]
        self.autoscaling = self.c["autoscaling"]
        self.ec2 = self.c["ec2"]
        self.group = Group(self.autoscaling, self.ec2, None, name=self.c["group"])
        self.control = ControlPlane(open_store(f"s3://{o['bucket']}"))
        self.sim = SimTrainers(self.clock, converge_at_step=converge_at_step)
        self.info = ClusterInfo(
            cluster=o["cluster_name"],
            bucket=o["bucket"],
            group=self.c["group"],
            node_count=n,
            instance_types=tuple(o["instance_types"]),
            spot=True,
            controller_type="t3.small",
        )
        defaults = dict(
            poll_s=MIN, settle_s=2 * MIN, stop_grace_s=5 * MIN, capacity_wait_s=10 * MIN
        )
        self.policy = WatchPolicy(**{**defaults, **policy})
        self.controller = Controller(
            info=self.info,
            control=self.control,
            capacity=self.group,
            runner_for=self._runner_for,
            clock=self.clock,
            prices=lambda: ({o["instance_type"]: Price(12.0, "sim spot")}, Price(0.02, "sim od")),
            policy=self.policy,
        )
        self.agents: dict[str, NodeAgent] = {}
        self.agents_on = False
        self.clock.hooks.append(self._minute)

    def _runner_for(self, run_uri: str) -> SimTrainers:
        self.sim.run_uri = run_uri
        return self.sim

    def live(self) -> list[str]:
        return live_instances(self.ec2, self.c["group"])

    def _minute(self, now: float) -> None:
        live = set(self.live())
        if self.sim.run_uri:
            self.sim.tick(Run(self.sim.run_uri), live)
        if self.agents_on:
            for iid in live:
                agent = self.agents.get(iid)
                if agent is None:
                    agent = self.agents[iid] = NodeAgent(
                        instance_id=iid,
                        launches=SimLaunches(self.sim, iid, now),
                        heartbeat_at=self.control.heartbeat_at,
                        leave=leave_group(self.autoscaling),
                        clock=self.clock,
                        boot_time=now,
                    )
                agent.check()

    def at(self, seconds: float, action: Any) -> None:
        fired: list[float] = []

        def hook(t: float) -> None:
            if not fired and t - self.clock.start >= seconds:
                fired.append(t)
                action()

        self.clock.hooks.append(hook)

    def serve_until_done(self, max_minutes: int = 24 * 60) -> None:
        """The controller's service loop until the current request is done."""
        for _ in range(max_minutes):
            self.controller.step()
            state = self.control.state()
            if state.done:
                return
            self.clock.sleep(self.policy.poll_s)
        raise AssertionError("the controller never finished the request")

    def terminate(self, instance_id: str) -> None:
        """A spot reclaim: EC2 terminates the instance (the group replaces it)."""
        self.sim.lose(instance_id)
        boto3.client("ec2", "us-east-1").terminate_instances(InstanceIds=[instance_id])
