"""``python -m trainer.launch.controller``: the supervisor that runs in the cloud.

A systemd service on the controller instance (``infra/controller.py``). Every poll it writes its
heartbeat to the bucket and reads ``control/request.json``; a request it has not finished is
supervised by :class:`trainer.launch.watch.Watcher` to the end (scale to 0), then the final
STATUS, the cost report (``<run>/cost.json``) and ``control/controller.json`` are written. The
controller keeps no state of its own: a restarted (or replaced) controller finds the unfinished
request in the bucket, stops whatever trainer still runs (it commits a checkpoint) and relaunches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from artifacts.node import (
    ENV_AVAILABILITY_ZONE,
    ENV_BUCKET,
    ENV_CLUSTER,
    ENV_CONTROLLER_TYPE,
    ENV_GROUP,
    ENV_INSTANCE_TYPES,
    ENV_NODE_COUNT,
    ENV_SPOT,
)
from artifacts.run import Run, RunState, Status
from trainer.launch.control import ControllerState, ControlPlane, RunRequest
from trainer.launch.cost import Price
from trainer.launch.node_script import node_scripts, stop_script
from trainer.launch.policy import Outcome, WatchPolicy
from trainer.launch.ports import Capacity, Clock, CommandRunner
from trainer.launch.ranks import make_spec
from trainer.launch.watch import Watcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    """What the controller knows about its cluster (from its environment file)."""

    cluster: str
    bucket: str
    group: str
    node_count: int
    instance_types: tuple[str, ...]
    spot: bool
    controller_type: str
    availability_zone: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClusterInfo:
        return cls(
            cluster=env[ENV_CLUSTER],
            bucket=env[ENV_BUCKET],
            group=env[ENV_GROUP],
            node_count=int(env[ENV_NODE_COUNT]),
            instance_types=tuple(t for t in env[ENV_INSTANCE_TYPES].split(",") if t),
            spot=env.get(ENV_SPOT, "true") == "true",
            controller_type=env[ENV_CONTROLLER_TYPE],
            availability_zone=env.get(ENV_AVAILABILITY_ZONE, ""),
        )


def policy_for(request: RunRequest, base: WatchPolicy) -> WatchPolicy:
    """The request's supervision policy on top of the controller's timings."""
    from dataclasses import replace

    # Idle nodes leave after idle_timeout_s: neither wait for full capacity nor back off longer.
    below_idle = max(request.idle_timeout_s - 2 * base.poll_s, base.poll_s)
    wait = min(base.capacity_wait_s, below_idle)
    return replace(
        base,
        backoff_max_s=min(base.backoff_max_s, below_idle),
        min_nodes=request.min_nodes,
        stall_timeout_s=request.stall_timeout_s,
        max_hours=request.max_hours,
        max_dollars=request.max_dollars,
        capacity_wait_s=wait,
    )


class Controller:
    """Polls the control plane and supervises one request at a time."""

    def __init__(
        self,
        *,
        info: ClusterInfo,
        control: ControlPlane,
        capacity: Capacity,
        runner_for: Callable[[str], CommandRunner],
        clock: Clock,
        prices: Callable[[], tuple[dict[str, Price], Price]],
        run_for: Callable[[str], Any] = Run,
        policy: WatchPolicy | None = None,
    ) -> None:
        self.info, self.control, self.capacity = info, control, capacity
        self.runner_for, self.clock, self.prices, self.run_for = runner_for, clock, prices, run_for
        self.policy = policy or WatchPolicy()

    def step(self) -> Outcome | None:
        """One poll: heartbeat, and supervise the request if there is an unfinished one."""
        self.control.beat(self.clock.now())
        request = self.control.request()
        state = self.control.state()
        if request is None or (state.request_id == request.request_id and state.done):
            return None
        if state.request_id == request.request_id:  # accepted earlier: this is a restart
            return self.supervise(request, adopt=True, previous=state)
        return self.supervise(request)

    def serve(self, *, max_steps: int | None = None) -> None:
        """The service loop (systemd restarts it if it dies)."""
        steps = 0
        while max_steps is None or steps < max_steps:
            try:
                self.step()
            except Exception as err:  # noqa: BLE001
                # The service must keep beating: a bad request or an AWS outage is logged and
                # retried next poll (nodes leave by themselves if this never recovers).
                log.exception("controller step failed: %s", err)
            steps += 1
            self.clock.sleep(self.policy.poll_s)

    def supervise(
        self, request: RunRequest, *, adopt: bool = False, previous: ControllerState | None = None
    ) -> Outcome:
        run = self.run_for(request.run_uri)
        state = ControllerState(request.request_id, request.run_uri, "accepted", self.clock.now())
        if previous is not None:
            state.attempt, state.commands = previous.attempt, dict(previous.commands)
        self.control.write_state(state)
        node_prices, controller_price = self.prices()

        def on_event(phase: str, detail: dict[str, Any]) -> None:
            now = self.clock.now()
            self.control.beat(now, request_id=request.request_id, phase=phase)
            state.phase, state.updated_at = phase, now
            state.attempt = int(detail.get("attempt", state.attempt))
            if "commands" in detail:
                state.commands = {str(r): list(c) for r, c in detail["commands"].items()}
            state.detail = {k: v for k, v in detail.items() if k not in ("attempt", "commands")}
            self.control.write_state(state)

        def scripts_for(assignments: list) -> dict[int, str]:
            types = {m.instance_id: m.instance_type for m in self.capacity.members()}
            itype = types.get(assignments[0].instance_id) or self.info.instance_types[0]
            spec = make_spec(
                request.run_uri,
                assignments,
                instance_type=itype,
                launcher=request.launcher,
                idle_timeout_s=int(request.idle_timeout_s),
            )
            return node_scripts(spec, assignments)

        watcher = Watcher(
            run_uri=request.run_uri,
            node_count=min(request.node_count, self.info.node_count),
            runner=self.runner_for(request.run_uri),
            capacity=self.capacity,
            run=run,
            clock=self.clock,
            scripts_for=scripts_for,
            stop_script=stop_script(),
            prices=node_prices,
            controller=(self.info.controller_type, controller_price),
            policy=policy_for(request, self.policy),
            public_key=request.public_key,
            on_event=on_event,
        )
        resume = {int(r): (c[0], c[1]) for r, c in state.commands.items()} if adopt else None
        outcome = watcher.supervise(
            adopt=adopt, resume=resume, attempts=state.attempt, started=request.submitted_at
        )
        self._record(run, outcome)
        state.phase, state.updated_at, state.outcome = "done", self.clock.now(), outcome.to_dict()
        self.control.write_state(state)
        self.control.beat(self.clock.now(), request_id=request.request_id, phase="done")
        for line in outcome.lines():
            log.info("%s", line)
        return outcome

    def _record(self, run: Any, outcome: Outcome) -> None:
        """Final STATUS (the controller's verdict when it gave up or stopped) and the cost report."""
        import json

        if outcome.cost is not None:
            run.store.put_bytes(
                Run.COST, (json.dumps(outcome.cost.to_dict(), indent=2) + "\n").encode()
            )
        status = run.read_status()
        if outcome.state in ("failed", "stopped"):
            state = RunState.FAILED if outcome.state == "failed" else RunState.INTERRUPTED
            base = status or Status(state=state)
            status = base.evolve(state=state, reason=outcome.message)
        if status is not None:
            extra = {**dict(status.extra), "supervision": outcome.to_dict()}
            from dataclasses import replace

            run.write_status(replace(status, extra=extra))


def main(env: Mapping[str, str] | None = None) -> int:
    """The systemd entry point: real AWS clients from the machine's environment file."""
    import boto3

    from artifacts.logs import init_logging
    from artifacts.store import open_store
    from trainer.launch.cost import price_for
    from trainer.launch.group import Group
    from trainer.launch.ports import SystemClock
    from trainer.launch.ssm import SsmRunner

    init_logging()
    env = os.environ if env is None else env
    info = ClusterInfo.from_env(env)
    session = boto3.session.Session()
    ec2, ssm = session.client("ec2"), session.client("ssm")
    group = Group(session.client("autoscaling"), ec2, ssm, name=info.group)

    def prices() -> tuple[dict[str, Price], Price]:
        from trainer.launch.submit import spot_history

        az = info.availability_zone
        history = spot_history(ec2, info.instance_types, az) if info.spot else []
        nodes = {
            t: price_for(t, spot=info.spot, history=history, availability_zone=az or None)
            for t in info.instance_types
        }
        return nodes, price_for(info.controller_type, spot=False)

    controller = Controller(
        info=info,
        control=ControlPlane(open_store(f"s3://{info.bucket}")),
        capacity=group,
        runner_for=lambda uri: SsmRunner(ssm, cluster=info.cluster, run_uri=uri),
        clock=SystemClock(),
        prices=prices,
    )
    log.info("controller for %s (group %s) up", info.cluster, info.group)
    controller.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
