"""``python -m trainer.launch.node_agent``: the node's dead-man switch (a systemd service).

Every minute it asks :func:`trainer.launch.deadman.node_should_leave` whether this node still has
a reason to exist: a launch command running (the launch script's pid in ``/run/twostage``), or
one expected soon (idle for less than ``run.idle_timeout_minutes``, the controller's heartbeat in
the bucket fresh). When not, it takes the node out of its Auto Scaling group with
``TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=True)``: the node stops
billing and the group does not replace it. This covers a dead controller, a lost laptop, a hung
relaunch — every failure where nobody else would end the billing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.node import (
    ENV_BUCKET,
    ENV_INSTANCE_ID,
    IDLE_TIMEOUT_FILE,
    LAUNCH_ACTIVE,
    LAUNCH_ENDED,
)
from trainer.launch.deadman import DEFAULT_IDLE_TIMEOUT_S, Decision, node_should_leave

log = logging.getLogger(__name__)

POLL_S = 60.0


@dataclass(frozen=True)
class LocalLaunches:
    """What the launch script leaves in ``/run/twostage`` (paths injectable for tests)."""

    active: Path = Path(LAUNCH_ACTIVE)
    ended: Path = Path(LAUNCH_ENDED)
    idle_timeout: Path = Path(IDLE_TIMEOUT_FILE)
    pid_alive: Callable[[int], bool] = lambda pid: Path(f"/proc/{pid}").exists()

    def running(self) -> bool:
        """A launch script is running (its pid file exists and the process is alive)."""
        try:
            pid = int(self.active.read_text().strip())
        except (FileNotFoundError, ValueError):
            return False
        return self.pid_alive(pid)

    def idle_since(self, boot_time: float) -> float:
        """When the node last became idle: the end of its last launch, else its boot."""
        try:
            return max(boot_time, self.ended.stat().st_mtime)
        except FileNotFoundError:
            return boot_time

    def idle_timeout_s(self) -> float:
        try:
            return float(self.idle_timeout.read_text().strip())
        except (FileNotFoundError, ValueError):
            return DEFAULT_IDLE_TIMEOUT_S


class NodeAgent:
    """One node's guard; ``leave`` is the call that takes it out of its group."""

    def __init__(
        self,
        *,
        instance_id: str,
        launches: Any,
        heartbeat_at: Callable[[], float | None],
        leave: Callable[[str], None],
        clock: Any,
        boot_time: float,
    ) -> None:
        self.instance_id = instance_id
        self.launches, self.heartbeat_at, self.leave = launches, heartbeat_at, leave
        self.clock, self.boot_time = clock, boot_time
        self.left = False

    def check(self) -> Decision:
        """One poll; leaves the group when the decision says so."""
        try:
            heartbeat = self.heartbeat_at()
        except Exception as err:  # noqa: BLE001 - an unreadable heartbeat counts as none
            log.warning("cannot read the controller heartbeat: %s", err)
            heartbeat = None
        decision = node_should_leave(
            self.clock.now(),
            trainer_running=self.launches.running(),
            idle_since=self.launches.idle_since(self.boot_time),
            heartbeat_at=heartbeat,
            idle_timeout_s=self.launches.idle_timeout_s(),
        )
        if decision.act and not self.left:
            log.warning("leaving the group: %s", decision.reason)
            self.leave(self.instance_id)
            self.left = True
        return decision

    def serve(self, *, max_polls: int | None = None) -> None:
        polls = 0
        while not self.left and (max_polls is None or polls < max_polls):
            try:
                self.check()
            except Exception as err:  # noqa: BLE001
                # Keep guarding: one failed terminate call (throttling) is retried next minute.
                log.exception("node agent check failed: %s", err)
            polls += 1
            if not self.left:
                self.clock.sleep(POLL_S)


def leave_group(autoscaling: Any) -> Callable[[str], None]:
    """The real ``leave``: out of the group, desired capacity one lower (no replacement)."""

    def leave(instance_id: str) -> None:
        autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
        )

    return leave


def main(env: Mapping[str, str] | None = None) -> int:
    import boto3

    from artifacts.logs import init_logging
    from artifacts.store import open_store
    from trainer.launch.control import ControlPlane
    from trainer.launch.ports import SystemClock

    init_logging()
    env = os.environ if env is None else env
    control = ControlPlane(open_store(f"s3://{env[ENV_BUCKET]}"))
    import psutil

    boot = psutil.boot_time()
    agent = NodeAgent(
        instance_id=env[ENV_INSTANCE_ID],
        launches=LocalLaunches(),
        heartbeat_at=control.heartbeat_at,
        leave=leave_group(boto3.client("autoscaling")),
        clock=SystemClock(),
        boot_time=boot,
    )
    agent.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
