"""The supervision state machine, driven by fakes and a fake clock (no sleeping)."""

from __future__ import annotations

import re

import pytest

from artifacts.run import RunState, Status
from trainer.launch.attempt import record_ending
from trainer.launch.cost import Price
from trainer.launch.node_script import node_scripts, stop_script
from trainer.launch.policy import WatchPolicy
from trainer.launch.ports import Invocation
from trainer.launch.ranks import make_spec
from trainer.launch.watch import Watcher

from .fakes import RUN, FakeClock, FakeGroup, FakeRun, FakeRunner

POLICY = WatchPolicy(
    poll_s=60, max_failures=3, backoff_base_s=60, settle_s=150, stop_grace_s=300,
    capacity_wait_s=600, stall_timeout_s=6 * 3600,
)  # fmt: skip
PRICES = {"p4d.24xlarge": Price(12.0, "spot history test")}


def make(n: int = 2, policy: WatchPolicy = POLICY, **runner_kw):
    clock = FakeClock()
    group = FakeGroup(clock, n)
    runner = FakeRunner(**runner_kw)
    run = FakeRun()
    events: list[tuple[str, dict]] = []

    def scripts_for(assignments):
        return node_scripts(make_spec(RUN, assignments, instance_type="p4d.24xlarge"), assignments)

    watcher = Watcher(
        run_uri=RUN,
        node_count=n,
        runner=runner,
        capacity=group,
        run=run,
        clock=clock,
        scripts_for=scripts_for,
        stop_script=stop_script(),
        prices=PRICES,
        controller=("t3.small", Price(0.02, "od table")),
        policy=policy,
        on_event=lambda phase, detail: events.append((phase, detail)),
    )
    return watcher, clock, group, runner, run, events


def master_addr(script: str) -> str:
    return re.search(r"--master_addr (\S+)", script).group(1)


def at(clock: FakeClock, seconds: float, action) -> None:
    """Run `action` once, the first time the fake clock passes start + seconds."""
    fired = []

    def hook(t):
        if not fired and t - clock.start >= seconds:
            fired.append(t)
            action()

    clock.hooks.append(hook)


def test_converged_run_scales_to_zero_and_reports_cost_per_type():
    watcher, clock, group, runner, run, events = make(n=3)
    at(clock, 3600, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    assert group.live() == [] and group.desired() == 0  # zero idle spend
    assert group.desired_calls == [3, 0]
    (p4d,) = outcome.cost.by_type
    assert p4d.node_hours == pytest.approx(3.0)  # 3 nodes × 1 hour
    assert p4d.dollars == pytest.approx(36.0)
    assert outcome.cost.controller.dollars == pytest.approx(0.02)
    text = "\n".join(outcome.lines())
    assert "p4d.24xlarge: 3.00 node-hours × $12.0000/h (spot history test) = $36.00" in text
    assert "no instance left running" in text
    assert outcome.download_command == f"invoke download --src {RUN}/final --dest ./model"
    assert len(runner.attempt(1)) == 3 and watcher.attempts == 1
    # Every launch targets one instance; the oldest is the head (rank 0).
    first = runner.attempt(1)
    assert [s.instance_id for s in first] == ["i-0000", "i-0001", "i-0002"]
    assert {master_addr(s.script) for s in first} == {"10.0.0.10"}
    assert ("running", events[0][1]) == events[0] and "commands" in events[0][1]


def test_download_command_names_the_public_key():
    watcher, clock, group, runner, run, _ = make()
    watcher.public_key = "keys/release.pub"
    at(clock, 60, run.converge)
    assert watcher.supervise().download_command.endswith("--public-key keys/release.pub")


def test_a_lost_node_is_replaced_by_the_group_and_the_run_relaunched():
    watcher, clock, group, runner, run, _ = make(n=2)
    at(clock, 1800, lambda: group.lose("i-0001"))  # spot reclaim half an hour in
    at(clock, 7200, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    # The survivor was asked to commit and exit (SIGTERM) before the relaunch.
    assert [s.instance_id for s in runner.sent if "stop" in s.comment] == ["i-0000"]
    second = runner.attempt(2)
    assert [s.instance_id for s in second] == ["i-0000", "i-0002"]  # the group's replacement
    assert {master_addr(s.script) for s in second} == {"10.0.0.10"}  # the head stayed
    assert all(f"--run {RUN}" in s.script for s in runner.launches())  # resumes by itself
    assert group.live() == []
    (p4d,) = outcome.cost.by_type
    assert p4d.node_hours == pytest.approx((7200 + 1800 + (7200 - 1800)) / 3600, rel=0.02)


def test_exit_75_waits_for_the_reclaim_then_relaunches():
    watcher, clock, group, runner, run, events = make(n=2)

    def interrupted():
        runner.finish("i-0000", 75)
        at(clock, clock.elapsed() + 100, lambda: group.lose("i-0000"))

    at(clock, 600, interrupted)
    at(clock, 5000, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    # It waited the settle time, beating every poll (nodes read a silent controller as dead).
    waits = [d["in_s"] for phase, d in events if phase == "relaunching"]
    assert waits[0] == POLICY.settle_s and len(waits) == 3
    assert [s.instance_id for s in runner.attempt(2)] == ["i-0001", "i-0002"]
    assert group.live() == []


def test_capacity_short_continues_with_min_nodes_then_grows_back():
    policy = WatchPolicy(
        poll_s=60, settle_s=60, stop_grace_s=120, min_nodes=2, capacity_wait_s=600,
        stall_timeout_s=10**6,
    )  # fmt: skip
    watcher, clock, group, runner, run, _ = make(n=3, policy=policy)
    group.capacity = 0  # no spot capacity for a replacement
    at(clock, 900, lambda: group.lose("i-0002"))

    def capacity_returns():
        group.capacity = 10

    at(clock, 5000, capacity_returns)
    at(clock, 9000, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    sizes = [len(runner.attempt(k)) for k in range(1, watcher.attempts + 1)]
    assert sizes == [3, 2, 3]  # full, fewer after the capacity wait, full again
    assert group.desired_calls[0] == 3 and group.desired_calls[-1] == 0
    assert 600 <= clock.sleeps.count(60.0) * 60  # it did wait before going on with fewer
    assert group.live() == []


def test_below_min_nodes_it_waits_then_gives_up_and_scales_to_zero():
    policy = WatchPolicy(poll_s=60, min_nodes=2, capacity_wait_s=600, capacity_timeout_s=3600)
    watcher, clock, group, runner, run, _ = make(n=2, policy=policy)
    group.capacity = 0
    at(clock, 600, lambda: group.lose("i-0001"))

    outcome = watcher.supervise()

    assert outcome.state == "failed"
    assert "only 1 of 2 node(s) (at least 2 needed)" in outcome.message
    assert group.live() == [] and group.desired() == 0


def test_repeated_failure_stops_after_the_retry_bound_with_backoff():
    watcher, clock, group, runner, run, _events = make(n=2)
    runner.on_launch = lambda sent: runner.results.__setitem__(  # a different failure each time
        sent.command_id, Invocation("Failed", 1 if sent.instance_id == "i-0000" else 3)
    )
    codes = iter(["OOM", "NCCL error", "disk full", "x", "y", "z"])
    runner.on_launch = lambda sent, f=runner.on_launch: (
        f(sent),
        setattr(run, "status", Status(state=RunState.FAILED, reason=next(codes))),
    )

    outcome = watcher.supervise()

    assert outcome.state == "failed"
    assert watcher.attempts == 3  # max_failures
    assert "gave up: 3 consecutive failed attempts" in outcome.message
    assert "node 0 failed with exit code 1" in outcome.message
    waits = [
        d["in_s"] for phase, d in _events if phase == "relaunching" and d["why"].startswith("node")
    ]
    assert 60 in waits and 120 in waits  # exponential backoff
    assert group.live() == []  # a run that failed for good stops billing too
    assert outcome.download_command is None


def test_a_resume_failing_the_same_way_twice_ends_failed_not_in_a_loop():
    """A resume over the collective's time-out: every relaunch converts, times out, exits 1."""
    watcher, clock, group, runner, run, events = make(n=2)
    run.at_step(40000)
    timeouts = iter(range(1800001, 1800100))

    def launch(sent):
        def fail():
            run.status = Status(
                state=RunState.FAILED, global_step=40000,
                reason=f"DistBackendError: Watchdog caught collective operation timeout: "
                f"WorkNCCL(SeqNum=12, OpType=BROADCAST) ran for {next(timeouts)} milliseconds",
            )  # fmt: skip
            runner.finish(sent.instance_id, 1)

        at(clock, clock.elapsed() + 1800, fail)

    runner.on_launch = launch

    outcome = watcher.supervise()

    assert outcome.state == "failed" and watcher.attempts == 2  # not max_failures, not a loop
    assert "failed the same way 2 times in a row without a step of progress" in outcome.message
    assert "collective operation timeout" in outcome.message
    # STATUS says so, for `invoke status` and the next person to look.
    assert run.status.state is RunState.FAILED and run.status.reason.startswith("controller: ")
    assert "the same way 2 times" in run.status.reason
    assert group.live() == [] and group.desired() == 0  # scaled to 0: no more spot hours


def test_the_same_failure_after_progress_is_not_a_loop():
    watcher, clock, group, runner, run, _ = make(n=1)
    steps = iter([100, 200, 300])

    def launch(sent):
        def fail():
            run.status = Status(state=RunState.FAILED, global_step=next(steps, 300),
                                reason="RuntimeError: CUDA error: an illegal memory access")
            runner.finish(sent.instance_id, 1)

        at(clock, clock.elapsed() + 3600, fail)

    runner.on_launch = launch
    outcome = watcher.supervise()
    assert outcome.state == "failed"
    assert watcher.attempts == 3 and "3 consecutive failed attempts" in outcome.message


def test_interruptions_do_not_count_as_failures_but_are_bounded():
    policy = WatchPolicy(poll_s=60, max_failures=2, max_restarts=4, settle_s=10, stop_grace_s=60)
    watcher, clock, group, runner, run, _ = make(n=1, policy=policy)
    runner.on_launch = lambda sent: at(
        clock, clock.elapsed() + 60, lambda: runner.finish(sent.instance_id, 75)
    )

    outcome = watcher.supervise()

    assert outcome.state == "failed"
    assert watcher.attempts == 5  # first launch + 4 relaunches, none counted as a failure
    assert "4 relaunches" in outcome.message


def test_stop_request_commits_and_scales_to_zero():
    watcher, clock, group, runner, run, _ = make(n=2)
    at(clock, 600, lambda: setattr(run, "stop", True))

    outcome = watcher.supervise()

    assert outcome.state == "stopped"
    assert watcher.attempts == 1
    assert sorted(s.instance_id for s in runner.sent if "stop" in s.comment) == ["i-0000", "i-0001"]
    assert "same --run resumes it" in outcome.message
    assert group.live() == []


def test_a_stalled_run_is_stopped_and_scaled_to_zero():
    policy = WatchPolicy(poll_s=60, stall_timeout_s=1800, stop_grace_s=120)
    watcher, clock, group, runner, run, _ = make(n=2, policy=policy)
    steps = iter(range(1, 10**6))
    progress = {"on": True}
    clock.hooks.append(lambda t: progress["on"] and run.at_step(next(steps)))
    at(clock, 3600, lambda: progress.update(on=False))  # the collective hangs an hour in

    outcome = watcher.supervise()

    assert outcome.state == "failed"
    assert "global step has not moved for 30 min" in outcome.message
    assert 3600 + 1800 <= clock.elapsed() <= 3600 + 1800 + 600
    assert group.live() == []


@pytest.mark.parametrize(
    ("cap", "reason"),
    [({"max_hours": 2}, "run.max_hours"), ({"max_dollars": 30}, "run.max_dollars")],
)
def test_budget_caps_stop_the_run(cap, reason):
    policy = WatchPolicy(poll_s=60, stop_grace_s=120, **cap)
    watcher, clock, group, runner, run, _ = make(n=2, policy=policy)
    steps = iter(range(1, 10**6))
    clock.hooks.append(lambda t: run.at_step(next(steps)))  # training makes progress

    outcome = watcher.supervise()

    assert outcome.state == "failed" and reason in outcome.message
    assert group.live() == []
    # 2 nodes × $12/h: $30 is reached after 1.25 h; 2 h is 2 h.
    expected = 2.0 if "max_hours" in cap else 1.25
    assert clock.elapsed() / 3600 == pytest.approx(expected, abs=0.1)


def test_exit_zero_without_converged_status_is_a_failure():
    watcher, clock, group, runner, run, _ = make(n=1, policy=WatchPolicy(poll_s=60, max_failures=1))
    at(clock, 120, lambda: runner.finish("i-0000", 0))

    outcome = watcher.supervise()

    assert outcome.state == "failed"
    assert "every node exited 0 but the run's status says missing" in outcome.message


def test_survivor_that_ignores_sigterm_is_cancelled():
    watcher, clock, group, runner, run, _ = make(n=2)
    real_send = runner.send

    def deaf_send(instance_id, script, *, comment):
        if "stop" in comment:
            return "cmd-stop"  # the trainer never exits
        return real_send(instance_id, script, comment=comment)

    runner.send = deaf_send
    at(clock, 600, lambda: group.lose("i-0000"))
    at(clock, 4000, run.converge)

    assert watcher.supervise().state == "converged"
    assert runner.cancelled == [runner.attempt(1)[1].command_id]


def test_keeps_watching_through_transient_poll_errors():
    watcher, clock, group, runner, run, _ = make(n=1)
    runner.poll_errors = 3
    at(clock, 900, run.converge)

    assert watcher.supervise().state == "converged"
    assert watcher.attempts == 1


def test_an_adopted_run_stops_stray_trainers_before_relaunching():
    watcher, clock, group, runner, run, _ = make(n=2)
    at(clock, 600, run.converge)

    assert watcher.supervise(adopt=True).state == "converged"
    kinds = [s.comment for s in runner.sent]
    assert kinds[:2] == ["twostage stop (adopt)"] * 2 and kinds[2] == "twostage launch 1"


def test_running_short_asks_the_group_again_when_an_idle_node_left():
    policy = WatchPolicy(poll_s=60, min_nodes=1, capacity_wait_s=120, stall_timeout_s=10**6)
    watcher, clock, group, runner, run, _ = make(n=2, policy=policy)
    group.capacity = 0
    at(clock, 300, lambda: group.leave("i-0001"))  # its dead-man switch: desired 2 → 1
    at(clock, 3000, lambda: setattr(group, "capacity", 5))
    at(clock, 6000, run.converge)

    assert watcher.supervise().state == "converged"
    assert [len(runner.attempt(k)) for k in range(1, watcher.attempts + 1)] == [2, 1, 2]


@pytest.mark.parametrize(
    ("code", "state", "words"),
    [(1, "failed", "node 0 failed with exit code 1"), (75, "interrupted", "node 0 exited 75")],
)
def test_an_attempt_whose_trainer_could_not_record_its_ending_is_recorded(code, state, words):
    """A killed rank (or a status write lost to a store outage) leaves "running": the controller
    saw the exit and records it; step and history stay."""
    watcher, clock, group, runner, run, _events = make(n=2)
    run.at_step(40)
    seen = []
    at(clock, 600, lambda: runner.finish("i-0000", code))
    at(clock, 700, lambda: seen.append(run.status))  # between the attempts
    at(clock, 5000, run.converge)

    assert watcher.supervise().state == "converged"

    (between,) = seen
    assert between.state == state and between.global_step == 40
    assert between.reason.startswith("attempt 1: ") and words in between.reason


def test_a_recorded_ending_is_not_rewritten_by_the_controller():
    run = FakeRun(Status(state=RunState.INTERRUPTED, reason="spot interruption notice"))
    assert record_ending(run, "interrupted", "attempt 1: node 0 exited 75") is None
    assert run.status.reason == "spot interruption notice"
