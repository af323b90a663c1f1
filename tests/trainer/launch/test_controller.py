"""The controller service, the control objects and the node agent, with fakes (no moto)."""

from __future__ import annotations

import os

import pytest

from artifacts.store import LocalStore
from trainer.launch import LaunchError
from trainer.launch.control import ControllerState, ControlPlane, RunRequest
from trainer.launch.controller import ClusterInfo, Controller, policy_for
from trainer.launch.cost import Price
from trainer.launch.node_agent import LocalLaunches, NodeAgent
from trainer.launch.policy import WatchPolicy

from .fakes import FakeClock, FakeGroup, FakeRun, FakeRunner

RUN = "s3://b/runs/r1"
ENV = {
    "TWOSTAGE_CLUSTER": "c1",
    "TWOSTAGE_BUCKET": "b",
    "TWOSTAGE_GROUP": "c1-nodes",
    "TWOSTAGE_NODE_COUNT": "2",
    "TWOSTAGE_INSTANCE_TYPES": "p4d.24xlarge,p5.48xlarge",
    "TWOSTAGE_SPOT": "true",
    "TWOSTAGE_CONTROLLER_TYPE": "t3.small",
}


def request(**over) -> RunRequest:
    base = dict(request_id="req-1", run_uri=RUN, submitted_at=0.0, node_count=2)
    return RunRequest(**{**base, **over})


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"run_uri": "/tmp/run"}, "lives in S3"),
        ({"min_nodes": 3}, "run.min_nodes must be between 1 and the cluster's 2"),
        ({"launcher": "mpirun"}, "launcher must be one of"),
        ({"request_id": "a b"}, "not a plain name"),
    ],
)
def test_bad_requests_are_refused(over, message):
    with pytest.raises(LaunchError, match=message):
        request(**over)


def test_control_objects_round_trip(tmp_path):
    control = ControlPlane(LocalStore(tmp_path))
    assert control.request() is None and control.state() == ControllerState()
    assert control.heartbeat_at() is None
    control.submit(request(max_dollars=100.0))
    assert control.request() == request(max_dollars=100.0)
    control.beat(123.0, request_id="req-1", phase="running")
    assert control.heartbeat_at() == 123.0
    (tmp_path / "control" / "request.json").write_text('{"run_uri": 1, "evil": true}')
    with pytest.raises(LaunchError, match="not a valid run request"):
        control.request()


def test_the_controllers_environment_describes_its_cluster():
    info = ClusterInfo.from_env(ENV)
    assert info.instance_types == ("p4d.24xlarge", "p5.48xlarge")
    assert info.node_count == 2 and info.spot and info.controller_type == "t3.small"


def test_capacity_wait_stays_below_the_idle_timeout():
    policy = policy_for(request(idle_timeout_s=600.0), WatchPolicy(poll_s=60, capacity_wait_s=1800))
    assert policy.capacity_wait_s == 480.0  # idle nodes would leave while it waited longer
    assert policy.backoff_max_s == 480.0


def test_a_restarted_controller_follows_a_launch_that_still_runs(tmp_path):
    clock = FakeClock()
    group = FakeGroup(clock, 2)
    runs = {RUN: StoredRun(tmp_path / "run")}
    ctl = _controller(tmp_path, clock, group, runs)
    ctl.control.submit(request(submitted_at=clock.now() - 3600))
    live = [m.instance_id for m in group.live()]
    commands = {"0": ["cmd-a", live[0]], "1": ["cmd-b", live[1]]}
    ctl.control.write_state(ControllerState("req-1", RUN, "running", 0.0, 4, commands=commands))
    runner = FakeRunner()  # both commands are still InProgress
    ctl.runner_for = lambda uri: runner
    clock.hooks.append(lambda t: t - clock.start > 600 and runs[RUN].converge())

    outcome = ctl.step()

    assert outcome.state == "converged" and outcome.attempts == 4
    assert runner.sent == []  # no SIGTERM, no relaunch: nothing of the run was lost
    # The controller's hours count from the submit an hour before the restart.
    assert outcome.cost.controller.node_hours == pytest.approx((3600 + 660) / 3600, rel=0.05)


def _controller(tmp_path, clock, group, runs):
    return Controller(
        info=ClusterInfo.from_env(ENV),
        control=ControlPlane(LocalStore(tmp_path / "bucket")),
        capacity=group,
        runner_for=lambda uri: FakeRunner(),
        clock=clock,
        prices=lambda: ({"p4d.24xlarge": Price(10.0, "t")}, Price(0.02, "t")),
        run_for=lambda uri: runs[uri],
        policy=WatchPolicy(poll_s=60, stop_grace_s=60),
    )


class StoredRun(FakeRun):
    def __init__(self, root):
        super().__init__()
        self.store = LocalStore(root)
        self.written = []

    def write_status(self, status):
        self.written.append(status)
        self.status = status


def test_controller_beats_while_idle_and_supervises_a_new_request_once(tmp_path):
    clock = FakeClock()
    group = FakeGroup(clock, 0)
    runs = {RUN: StoredRun(tmp_path / "run")}
    ctl = _controller(tmp_path, clock, group, runs)
    assert ctl.step() is None  # nothing submitted: only a heartbeat
    assert ctl.control.heartbeat_at() == clock.now()
    ctl.control.submit(request(submitted_at=clock.now()))
    clock.hooks.append(lambda t: t - clock.start > 600 and runs[RUN].converge())

    outcome = ctl.step()

    assert outcome.state == "converged" and group.live() == []
    state = ctl.control.state()
    assert state.done and state.outcome["state"] == "converged"
    assert (tmp_path / "run" / "cost.json").exists()
    assert runs[RUN].written[-1].extra["supervision"]["state"] == "converged"
    assert ctl.step() is None  # done: not supervised twice


def test_a_restarted_controller_adopts_the_unfinished_request(tmp_path):
    clock = FakeClock()
    group = FakeGroup(clock, 2)
    runs = {RUN: StoredRun(tmp_path / "run")}
    ctl = _controller(tmp_path, clock, group, runs)
    ctl.control.submit(request(submitted_at=clock.now()))
    ctl.control.write_state(ControllerState("req-1", RUN, "running", 0.0, 3))  # then it died
    runner = FakeRunner()
    ctl.runner_for = lambda uri: runner
    clock.hooks.append(lambda t: t - clock.start > 600 and runs[RUN].converge())

    assert ctl.step().state == "converged"
    assert [s.comment for s in runner.sent[:2]] == ["twostage stop (adopt)"] * 2


def test_a_failed_run_gets_a_failed_status_with_the_reason(tmp_path):
    clock = FakeClock()
    group = FakeGroup(clock, 2)
    runs = {RUN: StoredRun(tmp_path / "run")}
    ctl = _controller(tmp_path, clock, group, runs)
    ctl.control.submit(request(max_hours=1.0, submitted_at=clock.now()))
    steps = iter(range(1, 10**6))
    clock.hooks.append(lambda t: runs[RUN].at_step(next(steps)))

    outcome = ctl.step()

    assert outcome.state == "failed"
    final = runs[RUN].written[-1]
    assert str(final.state) == "failed" and "run.max_hours" in final.reason


def test_local_launch_state_as_the_node_script_leaves_it(tmp_path):
    active, ended, idle = tmp_path / "a", tmp_path / "e", tmp_path / "i"
    launches = LocalLaunches(active=active, ended=ended, idle_timeout=idle)
    assert not launches.running() and launches.idle_since(5.0) == 5.0
    assert launches.idle_timeout_s() == 900.0
    active.write_text(str(os.getpid()))
    idle.write_text("1200\n")
    assert launches.running() and launches.idle_timeout_s() == 1200.0
    dead = LocalLaunches(active=active, ended=ended, idle_timeout=idle, pid_alive=lambda p: False)
    assert not dead.running()  # a launch killed with -9 left its pid file behind
    active.unlink()
    ended.write_text("")
    os.utime(ended, (1000.0, 1000.0))
    assert launches.idle_since(5.0) == 1000.0


def test_node_agent_leaves_once_and_survives_an_unreadable_heartbeat():
    clock = FakeClock()
    left = []

    class Idle:
        def running(self):
            return False

        def idle_since(self, boot):
            return boot

        def idle_timeout_s(self):
            return 900.0

    def broken():
        raise ConnectionError("s3 unreachable")

    agent = NodeAgent(
        instance_id="i-1", launches=Idle(), heartbeat_at=broken, leave=left.append,
        clock=clock, boot_time=clock.now(),
    )  # fmt: skip
    agent.serve(max_polls=30)
    assert left == ["i-1"]
    assert 900 <= clock.elapsed() <= 960
