"""The watch / recovery state machine, driven by fakes and a fake clock (no sleeping)."""

from __future__ import annotations

import re

import pytest

from trainer.launch.cost import cost_report
from trainer.launch.ranks import make_spec, node_scripts, stop_script
from trainer.launch.watch import Invocation, Watcher, WatchPolicy

from .fakes import RUN, FakeClock, FakeFleet, FakeRunner, FakeRunState

POLICY = WatchPolicy(poll_s=60, max_failures=3, backoff_base_s=60, settle_s=150, stop_grace_s=300)


def make(n: int = 2, policy: WatchPolicy = POLICY, **runner_kw):
    clock = FakeClock()
    fleet = FakeFleet(clock, n)
    runner = FakeRunner(**runner_kw)
    state = FakeRunState()

    def scripts_for(assignments):
        return node_scripts(make_spec(RUN, assignments, instance_type="p4d.24xlarge"), assignments)

    def cost_for(spans, now):
        return cost_report(
            spans, now=now, instance_type="p4d.24xlarge", spot=True, spot_price=12.0, env={}
        )

    watcher = Watcher(
        run_uri=RUN,
        node_count=n,
        runner=runner,
        fleet=fleet,
        run_state=state,
        clock=clock,
        scripts_for=scripts_for,
        stop_script=stop_script(),
        cost_for=cost_for,
        policy=policy,
    )
    return watcher, clock, fleet, runner, state


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


def test_converged_run_terminates_every_node_and_reports_cost():
    watcher, clock, fleet, runner, state = make(n=3)
    at(clock, 3600, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert fleet.live() == []  # zero idle spend: nothing left billing
    assert sorted(outcome.terminated) == ["i-orig0", "i-orig1", "i-orig2"]
    assert outcome.cost.node_hours == pytest.approx(3.0)  # 3 nodes × 1 hour
    assert outcome.cost.dollars == pytest.approx(36.0)
    text = "\n".join(outcome.lines())
    assert "node-hours: 3.00" in text and "spent: $36.00" in text and "on-demand reference" in text
    assert outcome.download_command == f"invoke download --src {RUN}/final --dest ./model"
    assert f"stage 2: invoke download --src {RUN}/final --dest ./model" in text
    assert len(runner.attempt(1)) == 3 and watcher.attempts == 1


def test_download_command_names_the_public_key():
    watcher, clock, fleet, runner, state = make()
    watcher.public_key = "keys/release.pub"
    at(clock, 60, state.converge)
    assert watcher.watch().download_command.endswith("--dest ./model --public-key keys/release.pub")


@pytest.mark.parametrize("lost", [0, 1])
def test_node_lost_mid_run_is_replaced_and_the_run_relaunched(lost):
    watcher, clock, fleet, runner, state = make(n=2)
    at(clock, 1800, lambda: fleet.lose(lost))  # spot reclaim half an hour in
    at(clock, 7200, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert fleet.replaced == [lost]
    # The survivor was asked to commit and exit (SIGTERM) before the relaunch.
    stops = [s for s in runner.sent if "stop" in s.comment]
    assert [s.index for s in stops] == [1 - lost]
    first, second = runner.attempt(1), runner.attempt(2)
    assert len(first) == 2 and len(second) == 2
    new = next(n for n in fleet.instances if n.instance_id.startswith("i-new"))
    # Every node of the relaunch rendezvous at the current head; the new node is in the hostfile.
    heads = {master_addr(s.script) for s in second}
    assert heads == {new.private_ip if lost == 0 else "10.0.0.10"}
    assert all(new.private_ip in s.script for s in second)
    # Same run prefix: the trainer resumes from its last committed checkpoint by itself.
    assert all(f"--run {RUN}" in s.script for s in first + second)
    # The lost instance, the replacement and the survivor are all billed, then all terminated.
    assert fleet.live() == []
    assert len({s for s in watcher._spans}) == 3
    assert outcome.cost.node_hours == pytest.approx((1800 + 7200 + (7200 - 1800)) / 3600, rel=0.02)


def test_exit_75_waits_for_the_reclaim_then_relaunches():
    watcher, clock, fleet, runner, state = make(n=2)

    def interrupted():
        runner.finish(0, 75)
        # The reclaim follows the notice within the settle time.
        at(clock, clock.elapsed() + 100, lambda: fleet.lose(0))

    at(clock, 600, interrupted)
    at(clock, 5000, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert POLICY.settle_s in clock.sleeps
    assert fleet.replaced == [0]
    assert len(runner.attempt(2)) == 2
    assert fleet.live() == []


def test_exit_75_without_reclaim_relaunches_on_the_same_nodes():
    watcher, clock, fleet, runner, state = make(n=2)
    at(clock, 600, lambda: (runner.finish(0, 75), runner.finish(1, 75)))
    at(clock, 3000, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert fleet.replaced == []
    assert watcher.attempts == 2
    assert {s.index for s in runner.attempt(2)} == {0, 1}


def test_repeated_failure_stops_after_the_retry_bound_with_backoff():
    watcher, clock, fleet, runner, state = make(n=2)
    runner.on_launch = lambda sent: runner.results.__setitem__(
        sent.command_id, Invocation("Failed", 1)
    )

    outcome = watcher.watch()

    assert outcome.state == "failed"
    assert watcher.attempts == 3  # max_failures
    assert "gave up: 3 consecutive failed attempts" in outcome.message
    assert "node 0 failed with exit code 1" in outcome.message
    assert "invoke logs" in outcome.message
    assert 60.0 in clock.sleeps and 120.0 in clock.sleeps  # exponential backoff between tries
    assert fleet.live() == []  # a run that failed for good stops billing too
    assert outcome.download_command is None


def test_interruptions_do_not_count_as_failures_but_are_bounded():
    policy = WatchPolicy(poll_s=60, max_failures=2, max_restarts=4, settle_s=10, stop_grace_s=60)
    watcher, clock, fleet, runner, state = make(n=1, policy=policy)
    runner.on_launch = lambda sent: at(clock, clock.elapsed() + 60, lambda: runner.finish(0, 75))

    outcome = watcher.watch()

    assert outcome.state == "failed"
    assert watcher.attempts == 5  # first launch + 4 relaunches, none counted as a failure
    assert "4 relaunches" in outcome.message


def test_waits_for_capacity_with_backoff():
    watcher, clock, fleet, runner, state = make(n=2)
    fleet.no_capacity_tries = 2
    at(clock, 600, lambda: fleet.lose(1))
    at(clock, 20000, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert fleet.replaced == [1]
    assert clock.sleeps.count(60.0) >= 1 and 120.0 in clock.sleeps


def test_gives_up_when_no_capacity_comes_back():
    policy = WatchPolicy(poll_s=60, capacity_timeout_s=3600)
    watcher, clock, fleet, runner, state = make(n=2, policy=policy)
    fleet.no_capacity_tries = 10**6
    at(clock, 600, lambda: fleet.lose(1))

    outcome = watcher.watch()

    assert outcome.state == "failed"
    assert "no capacity to replace node(s) [1]" in outcome.message
    assert fleet.live() == []


def test_stop_request_ends_the_watch_without_relaunch():
    watcher, clock, fleet, runner, state = make(n=2)

    def stop():
        state.stop = True
        runner.finish(0, 75)
        runner.finish(1, 75)

    at(clock, 600, stop)
    outcome = watcher.watch()

    assert outcome.state == "stopped"
    assert watcher.attempts == 1
    assert "same --run to resume" in outcome.message


def test_exit_zero_without_converged_status_is_a_failure():
    watcher, clock, fleet, runner, state = make(n=1, policy=WatchPolicy(poll_s=60, max_failures=1))
    at(clock, 120, lambda: runner.finish(0, 0))

    outcome = watcher.watch()

    assert outcome.state == "failed"
    assert "every node exited 0 but the run's status says missing" in outcome.message


def test_survivor_that_ignores_sigterm_is_cancelled():
    watcher, clock, fleet, runner, state = make(n=2, stop_exit_code=75)
    runner.send_orig = runner.send

    def deaf_send(node_index, script, *, comment):
        if "stop" in comment:
            runner.sent.append(type(runner.sent[0])(node_index, script, comment, "cmd-stop"))
            return "cmd-stop"  # the trainer never exits
        return runner.send_orig(node_index, script, comment=comment)

    runner.send = deaf_send
    at(clock, 600, lambda: fleet.lose(0))
    at(clock, 4000, state.converge)

    outcome = watcher.watch()

    assert outcome.state == "converged"
    assert runner.cancelled == [runner.attempt(1)[1].command_id]


def test_keeps_watching_through_transient_poll_errors():
    watcher, clock, fleet, runner, state = make(n=1)
    runner.poll_errors = 3
    at(clock, 900, state.converge)

    assert watcher.watch().state == "converged"
    assert watcher.attempts == 1
