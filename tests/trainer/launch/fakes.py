"""Hand-written fakes for the launch tests: clock, fleet, command runner, run state; outputs data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from artifacts.run import Status
from trainer.launch.watch import Invocation, NodeState

CLUSTER = "ts-test"
RUN = "s3://ts-bucket/runs/r1"


def outputs_dict(n: int = 2, **over: Any) -> dict[str, Any]:
    """A valid `pulumi stack output --json` object for an n-node cluster."""
    ips = [f"10.0.0.{10 + i}" for i in range(n)]
    ids = [f"i-{i:017x}" for i in range(n)]
    data = {
        "region": "us-east-1",
        "availability_zone": "us-east-1a",
        "bucket": "ts-bucket",
        "run_prefix": "s3://ts-bucket/runs",
        "cluster_name": CLUSTER,
        "node_count": n,
        "instance_ids": ids,
        "private_ips": ips,
        "head_instance_id": ids[0],
        "head_private_ip": ips[0],
        "instance_type": "p4d.24xlarge",
        "spot": True,
        "launch_template_id": "lt-0123456789abcdef0",
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


class FakeFleet:
    """Instances in memory; `lose` is a spot reclaim; `replace` fails while capacity is short."""

    def __init__(self, clock: FakeClock, n: int = 2) -> None:
        self.clock = clock
        self.instances = [
            NodeState(i, f"i-orig{i}", f"10.0.0.{10 + i}", "running", clock.now(), ssm_online=True)
            for i in range(n)
        ]
        self.replaced: list[int] = []
        self.no_capacity_tries = 0
        self.terminate_calls = 0

    def nodes(self) -> list[NodeState]:
        return list(self.instances)

    def live(self) -> list[NodeState]:
        return [n for n in self.instances if n.state in ("pending", "running")]

    def lose(self, index: int) -> None:
        self.instances = [
            replace(n, state="terminated", end_time=self.clock.now())
            if n.index == index and n.state == "running"
            else n
            for n in self.instances
        ]

    def replace(self, index: int) -> NodeState | None:
        if self.no_capacity_tries > 0:
            self.no_capacity_tries -= 1
            return None
        k = len(self.instances)
        node = NodeState(
            index, f"i-new{k}", f"10.0.1.{k}", "running", self.clock.now(), ssm_online=True
        )
        self.instances.append(node)
        self.replaced.append(index)
        return node

    def terminate_all(self) -> list[str]:
        self.terminate_calls += 1
        ids = [n.instance_id for n in self.live()]
        self.instances = [
            replace(n, state="terminated", end_time=self.clock.now()) if n.instance_id in ids else n
            for n in self.instances
        ]
        return ids


@dataclass
class Sent:
    index: int
    script: str
    comment: str
    command_id: str


@dataclass
class FakeRunner:
    """Records commands. Launch commands run until the test (or a SIGTERM) ends them."""

    stop_exit_code: int = 75
    sent: list[Sent] = field(default_factory=list)
    results: dict[str, Invocation] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    poll_errors: int = 0
    on_launch: Callable[[Sent], None] | None = None

    def send(self, node_index: int, script: str, *, comment: str) -> str:
        cid = f"cmd-{len(self.sent)}"
        s = Sent(node_index, script, comment, cid)
        self.sent.append(s)
        if "stop" in comment:
            # SIGTERM: the trainer on that node commits and exits 75.
            for cmd in self.launches_of(node_index):
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

    def launches_of(self, index: int) -> list[Sent]:
        return [s for s in self.launches() if s.index == index]

    def attempt(self, k: int) -> list[Sent]:
        return [s for s in self.launches() if s.comment.endswith(f"launch {k}")]

    def finish(self, index: int, code: int, status: str | None = None) -> None:
        """The latest launch command on that node ends with this exit code."""
        cmd = self.launches_of(index)[-1]
        self.results[cmd.command_id] = Invocation(
            status or ("Success" if code == 0 else "Failed"), code
        )


@dataclass
class FakeRunState:
    state: dict[str, Any] | None = None
    stop: bool = False

    def read_status(self) -> Status | None:
        return None if self.state is None else Status.from_dict(self.state)

    def stop_requested(self) -> bool:
        return self.stop

    def converge(self, step: int = 1234) -> None:
        self.state = {"state": "converged", "global_step": step, "best_val_loss": 2.5}
