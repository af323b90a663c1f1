"""Recovery timings follow measured costs: detection within a poll, no fixed settle when the loss
is known, wait-or-continue computed and logged (fake clock, fake group and runner)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from artifacts.run import NOTICE_REASON, STOP_REASON, RunState, Status
from trainer.launch.plan import Knobs
from trainer.launch.policy import WatchPolicy
from trainer.launch.recovery import (
    Recovery,
    RepeatGuard,
    notice_deadline,
    settle_after_exit,
    wait_or_continue,
)

from .test_watch import at, make

FAST = WatchPolicy(stall_timeout_s=10**6)  # the defaults: 10 s poll, 420 s replacement, ...


def test_wait_or_continue_weighs_resume_cost_against_the_replacement():
    # 2 nodes, replacement 7 min away, resume 8 min (the universal fallback at 7B): waiting
    # bills 1 x 420 + 2 x 480 = 1380 node-s, going on 1 x 480 + 2 x 480 = 1440 → wait.
    go, why = wait_or_continue(have=1, wanted=2, waited_s=0, replacing=True, policy=FAST,
                               resume_s=480)  # fmt: skip
    assert not go and "expected in 420 s (1380 node-s without progress) vs 1440 node-s" in why
    # A resharded resume (4.3 min projected at 7B) is shorter than the replacement: go on.
    go, why = wait_or_continue(have=1, wanted=2, waited_s=0, replacing=True, policy=FAST,
                               resume_s=260)  # fmt: skip
    assert go and "bills 780 node-s without progress" in why and "vs 940 node-s waiting" in why
    # Already waited most of it: the replacement is close, wait the rest.
    assert not wait_or_continue(have=7, wanted=8, waited_s=300, replacing=True, policy=FAST,
                                resume_s=260)[0]  # fmt: skip
    # No replacement launching: waiting is open-ended.
    go, why = wait_or_continue(have=7, wanted=8, waited_s=120, replacing=False, policy=FAST,
                               resume_s=900)  # fmt: skip
    assert go and "no replacement is launching" in why
    # Never past the capacity wait.
    assert wait_or_continue(have=1, wanted=2, waited_s=600, replacing=True, policy=FAST,
                            resume_s=10**4)[0]  # fmt: skip


def test_settle_follows_the_notice_not_a_fixed_timer():
    deadline = datetime(2026, 12, 1, 23, 30, tzinfo=UTC).timestamp()
    status = Status(state=RunState.INTERRUPTED, reason=NOTICE_REASON,
                    extra={"notice": "spot terminate at 2026-12-01T23:30:00Z"})  # fmt: skip
    assert notice_deadline(status) == deadline
    assert settle_after_exit(NOTICE_REASON, deadline, deadline - 40, FAST) == 40 + FAST.poll_s
    assert settle_after_exit(STOP_REASON, None, 0, FAST) == 0  # no node is going away
    assert settle_after_exit("store outage: x", None, 0, FAST) == 0
    assert settle_after_exit(None, None, 0, FAST) == FAST.settle_s  # unknown: the fixed wait


def test_recovery_measures_relaunch_to_first_step_and_sees_a_pending_replacement():
    r = Recovery(RepeatGuard())
    r.launched(Status(state=RunState.RUNNING, global_step=40), now=1000)
    assert r.progress(Status(state=RunState.RUNNING, global_step=40), now=1100) is None
    assert r.progress(Status(state=RunState.RUNNING, global_step=41), now=1180) == 180
    assert r.resume_s == 180
    pending = SimpleNamespace(state="pending", lifecycle="Pending")
    up = SimpleNamespace(state="running", lifecycle="InService")
    assert r.replacing([up, pending], waited=500, policy=FAST)
    assert r.replacing([up], waited=30, policy=FAST)  # the group has not reacted yet
    assert not r.replacing([up], waited=120, policy=FAST)  # nothing coming: capacity is short


def test_a_node_lost_mid_step_is_relaunched_within_the_projected_detection_budget():
    watcher, clock, group, runner, run, events = make(n=2, policy=FAST)
    runner.clock = clock
    lost_at = 1805.0
    at(clock, lost_at, lambda: group.lose("i-0001"))
    at(clock, 4000, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    relaunched = runner.attempt(2)[0].sent_at
    # The plan's recovery projection counts Knobs.detect_s for the controller's detection; one
    # more poll sees the SIGTERMed survivor exit (here at once; on a node, after its commit).
    assert relaunched - (clock.start + lost_at) <= Knobs(1, 1, True).detect_s + FAST.poll_s
    assert [s.instance_id for s in runner.attempt(2)] == ["i-0000", "i-0002"]


def test_a_reclaim_after_a_notice_relaunches_at_the_deadline_not_after_a_fixed_wait():
    watcher, clock, group, runner, run, events = make(n=2, policy=FAST)
    runner.clock = clock

    def notice():
        deadline = clock.now() + 90  # the notice came 30 s ago; the save committed
        iso = datetime.fromtimestamp(deadline, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        run.status = Status(state=RunState.INTERRUPTED, global_step=300, reason=NOTICE_REASON,
                            extra={"notice": f"spot terminate at {iso}"})  # fmt: skip
        runner.finish_all(75)
        at(clock, clock.elapsed() + 90, lambda: group.lose("i-0000"))

    at(clock, 1200, notice)
    at(clock, 6000, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    second = runner.attempt(2)
    assert [s.instance_id for s in second] == ["i-0001", "i-0002"]  # after the reclaim
    waited = second[0].sent_at - (clock.start + 1200)
    assert 90 <= waited <= 90 + 2 * FAST.poll_s  # the deadline, not settle_s on top


def test_capacity_that_never_returns_goes_on_with_survivors_and_says_why():
    policy = WatchPolicy(min_nodes=1, stall_timeout_s=10**6)
    watcher, clock, group, runner, run, events = make(n=2, policy=policy)
    runner.clock = clock
    group.capacity = 0  # no spot capacity for a replacement, ever
    at(clock, 900, lambda: group.lose("i-0001"))
    at(clock, 5000, run.converge)

    outcome = watcher.supervise()

    assert outcome.state == "converged"
    second = runner.attempt(2)
    assert [s.instance_id for s in second] == ["i-0000"]
    waited = second[0].sent_at - (clock.start + 900)
    # At once: a resume (240 s until measured) is shorter than a replacement (420 s), so going on
    # bills less idle node time; not the 600 s capacity wait, not even the launch grace.
    assert waited <= 2 * policy.poll_s
    (why,) = [d["why"] for phase, d in events if phase == "continuing-with-fewer"]
    assert "continuing with 1 of 2 node(s): replacement expected in" in why and "node-s" in why
