"""The ports of the supervision loop: what the watcher needs from SSM, the group, the run, time.

Plain data and protocols only (no boto3, no other launch module), so the adapters (:mod:`.ssm`,
:mod:`.group`, :class:`artifacts.run.Run`) and the state machine (:mod:`.watch`) all import this
and never each other. Tests implement the protocols with fakes and a fake clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from artifacts.run import Status

TERMINAL_COMMAND = frozenset(
    {"Success", "Failed", "Cancelled", "TimedOut", "Undeliverable", "Terminated",
     "DeliveryTimedOut", "ExecutionTimedOut"}
)  # fmt: skip
RESUMABLE_COMMAND = frozenset({"Cancelled", "TimedOut", "DeliveryTimedOut", "ExecutionTimedOut"})

LIVE_STATES = frozenset({"pending", "running"})
ENDED_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})


@dataclass(frozen=True)
class Invocation:
    """One node's command as SSM reports it; ``exit_code`` is None until it ends."""

    status: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Member:
    """One instance launched by the group, as EC2 and Auto Scaling report it."""

    instance_id: str
    private_ip: str
    instance_type: str
    state: str
    """EC2 state: pending | running | shutting-down | terminated | ..."""
    lifecycle: str
    """Auto Scaling lifecycle: InService | Pending | Terminating | ... ('' once it left)."""
    launch_time: float
    end_time: float | None = None
    ssm_online: bool | None = None
    """None: unknown (no SSM inventory available)."""

    @property
    def usable(self) -> bool:
        """InService and running, with an address: a launch may use it."""
        return (
            self.lifecycle == "InService"
            and self.state == "running"
            and bool(self.private_ip)
            and self.ssm_online is not False
        )


class CommandRunner(Protocol):
    def send(self, instance_id: str, script: str, *, comment: str) -> str:
        """Run ``script`` on that instance; return the command id."""

    def poll(self, command_id: str, instance_id: str) -> Invocation: ...

    def cancel(self, command_id: str) -> None: ...


class Capacity(Protocol):
    def members(self) -> list[Member]:
        """Every instance the group launched, live and ended."""

    def desired(self) -> int: ...

    def set_desired(self, capacity: int) -> None: ...


class RunView(Protocol):
    """What the watcher reads of the run (:class:`artifacts.run.Run` is the real one)."""

    def read_status(self) -> Status | None: ...

    def write_status(self, status: Status) -> None: ...

    def stop_requested(self) -> bool: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real :class:`Clock`."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
