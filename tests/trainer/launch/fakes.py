"""Hand-written fakes for the launch tests: clock, group, command runner, run; outputs data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from artifacts.run import RunState, Status
from trainer.launch.ports import Invocation, Member
from trainer.launch.ranks import Node

CLUSTER = "ts-test"
RUN = "s3://ts-bucket/runs/r1"



def nodes(n: int) -> list[Node]:
    """``n`` running nodes, indices 0..n-1, distinct instance ids and IPs (10.0.0.10 up)."""
    return [Node(i, f"i-{i}", f"10.0.0.{10 + i}") for i in range(n)]

def outputs_dict(n: int = 2, **over: Any) -> dict[str, Any]:
    """A valid `pulumi stack output --json` object for an n-node cluster."""
    data = {
        "region": "us-east-1",
        "availability_zone": "us-east-1a",
        "bucket": "ts-bucket",
        "run_prefix": "s3://ts-bucket/runs",
        "cluster_name": CLUSTER,
        "node_count": n,
        "instance_type": "p4d.24xlarge",
        "instance_types": ["p4d.24xlarge"],
        "spot": True,
        "ami_id": "ami-0123456789abcdef0",
        "autoscaling_group_name": f"{CLUSTER}-nodes",
        "launch_template_id": "lt-0123456789abcdef0",
        "controller_instance_id": "i-0c0c0c0c0c0c0c0c0",
        "controller_instance_type": "t3.small",
        "security_group_id": "sg-0123",
        "subnet_id": "subnet-0123",
    }
    data.update(over)
    return data


class FakeClock:
    """Time moves only when the code sleeps; hooks fire after every sleep (the test's scenario)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start
        self.start = start
        self.sleeps: list[float] = []
        self.hooks: list[Callable[[float], None]] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds
        for hook in list(self.hooks):
            hook(self.t)

    def elapsed(self) -> float:
        return self.t - self.start


class FakeGroup:
    """An Auto Scaling group in memory: keeps ``desired`` instances up while capacity lasts."""

    def __init__(self, clock: FakeClock, n: int = 2, *, itype: str = "p4d.24xlarge") -> None:
        self.clock = clock
        self.itype = itype
        self.instances: list[Member] = []
        self._desired = 0
        self.capacity = 10**6
        """How many more instances AWS can launch right now (spot capacity)."""
        self.desired_calls: list[int] = []
        self.set_desired(n)
        self.desired_calls.clear()

    def _launch(self) -> None:
        k = len(self.instances)
        self.instances.append(
            Member(f"i-{k:04d}", f"10.0.{k // 200}.{10 + k % 200}", self.itype, "running",
                   "InService", self.clock.now(), ssm_online=True)
        )  # fmt: skip

    def _reconcile(self) -> None:
        live = self.live()
        for m in live[self._desired :]:  # scale in: newest first does not matter here
            self._end(m.instance_id)
        while len(self.live()) < self._desired and self.capacity > 0:
            self.capacity -= 1
            self._launch()

    def _end(self, iid: str) -> None:
        self.instances = [
            replace(m, state="terminated", lifecycle="", end_time=self.clock.now())
            if m.instance_id == iid
            else m
            for m in self.instances
        ]

    def members(self) -> list[Member]:
        self._reconcile()
        return list(self.instances)

    def desired(self) -> int:
        return self._desired

    def set_desired(self, capacity: int) -> None:
        self.desired_calls.append(capacity)
        self._desired = capacity
        self._reconcile()

    def live(self) -> list[Member]:
        return [m for m in self.instances if m.state in ("pending", "running")]

    def lose(self, iid: str) -> None:
        """A spot reclaim: the instance ends; the group replaces it on the next look."""
        self._end(iid)

    def leave(self, iid: str) -> None:
        """A node's dead-man switch: out of the group, desired capacity one lower."""
        self._end(iid)
        self._desired = max(self._desired - 1, 0)


@dataclass
class Sent:
    instance_id: str
    script: str
    comment: str
    command_id: str
    sent_at: float | None = None
    """The fake clock's time when it was sent (when the runner has a clock)."""


@dataclass
class FakeRunner:
    """Records commands. Launch commands run until the test (or a SIGTERM) ends them."""

    stop_exit_code: int = 75
    sent: list[Sent] = field(default_factory=list)
    results: dict[str, Invocation] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    poll_errors: int = 0
    on_launch: Callable[[Sent], None] | None = None
    clock: Any = None

    def send(self, instance_id: str, script: str, *, comment: str) -> str:
        cid = f"cmd-{len(self.sent)}"
        s = Sent(instance_id, script, comment, cid, self.clock.now() if self.clock else None)
        self.sent.append(s)
        if "stop" in comment:
            # SIGTERM: the trainer on that node commits and exits 75.
            for cmd in self.launches_on(instance_id):
                if cmd.command_id not in self.results:
                    self.results[cmd.command_id] = Invocation("Failed", self.stop_exit_code)
            self.results[cid] = Invocation("Success", 0)
        elif self.on_launch:
            self.on_launch(s)
        return cid

    def poll(self, command_id: str, instance_id: str) -> Invocation:
        if self.poll_errors:
            self.poll_errors -= 1
            raise ConnectionError("endpoint unreachable")
        return self.results.get(command_id, Invocation("InProgress"))

    def cancel(self, command_id: str) -> None:
        self.cancelled.append(command_id)

    def launches(self) -> list[Sent]:
        return [s for s in self.sent if "launch" in s.comment]

    def launches_on(self, instance_id: str) -> list[Sent]:
        return [s for s in self.launches() if s.instance_id == instance_id]

    def attempt(self, k: int) -> list[Sent]:
        return [s for s in self.launches() if s.comment.endswith(f"launch {k}")]

    def finish_all(self, code: int, status: str | None = None) -> None:
        """Every running launch command ends with this exit code."""
        for s in self.launches():
            if s.command_id not in self.results:
                self.results[s.command_id] = Invocation(
                    status or ("Success" if code == 0 else "Failed"), code
                )

    def finish(self, instance_id: str, code: int, status: str | None = None) -> None:
        cmd = self.launches_on(instance_id)[-1]
        self.results[cmd.command_id] = Invocation(
            status or ("Success" if code == 0 else "Failed"), code
        )


@dataclass
class FakeRun:
    """The run as the watcher reads it (status, stop marker)."""

    status: Status | None = None
    stop: bool = False

    def read_status(self) -> Status | None:
        return self.status

    def write_status(self, status: Status) -> None:
        self.status = status

    def stop_requested(self) -> bool:
        return self.stop

    def converge(self, step: int = 1234) -> None:
        self.status = Status(state=RunState.CONVERGED, global_step=step, best_val_loss=2.5)

    def at_step(self, step: int) -> None:
        self.status = Status(state=RunState.RUNNING, global_step=step)
