"""Dead-man switches as pure functions of a fake clock."""

from __future__ import annotations

from trainer.launch.deadman import StallWatch, node_should_leave, over_budget, preparing_bytes

from .fakes import FakeClock

MIN = 60.0


def test_a_running_trainer_keeps_its_node_whatever_the_heartbeat():
    clock = FakeClock()
    clock.sleep(10 * 3600)
    d = node_should_leave(
        clock.now(), trainer_running=True, idle_since=clock.start, heartbeat_at=None
    )
    assert not d.act


def test_an_idle_node_leaves_after_the_idle_timeout_and_not_before():
    clock = FakeClock()
    idle_since = clock.now()
    heartbeat = clock.now()
    decisions = []
    for _ in range(20):
        clock.sleep(MIN)
        heartbeat = clock.now()  # the controller is alive
        decisions.append(
            node_should_leave(
                clock.now(), trainer_running=False, idle_since=idle_since, heartbeat_at=heartbeat
            ).act
        )
    assert decisions.index(True) == 14  # the 15th minute
    assert not any(decisions[:14])


def test_a_stale_heartbeat_makes_an_idle_node_leave_at_once():
    clock = FakeClock()
    heartbeat = clock.now()
    clock.sleep(16 * MIN)  # the controller died 16 min ago; the trainer just exited
    d = node_should_leave(
        clock.now(), trainer_running=False, idle_since=clock.now(), heartbeat_at=heartbeat
    )
    assert d.act and "heartbeat" in d.reason


def test_no_heartbeat_yet_is_bounded_by_the_idle_rule():
    clock = FakeClock()
    boot = clock.now()
    clock.sleep(14 * MIN)
    assert not node_should_leave(
        clock.now(), trainer_running=False, idle_since=boot, heartbeat_at=None
    ).act
    clock.sleep(MIN)
    assert node_should_leave(
        clock.now(), trainer_running=False, idle_since=boot, heartbeat_at=None
    ).act


def test_custom_idle_timeout():
    d = node_should_leave(
        1000.0, trainer_running=False, idle_since=0.0, heartbeat_at=999.0, idle_timeout_s=900.0
    )
    assert d.act
    assert not node_should_leave(
        1000.0, trainer_running=False, idle_since=0.0, heartbeat_at=999.0, idle_timeout_s=1200.0
    ).act


def test_stall_watch_fires_only_when_the_step_stops_moving():
    clock = FakeClock()
    watch = StallWatch(timeout_s=30 * MIN)
    watch.reset(clock.now())
    step = 0
    for _ in range(120):  # two hours of progress, one step a minute
        clock.sleep(MIN)
        step += 1
        assert not watch.observe(clock.now(), step).act
    fired_after = None
    for k in range(1, 60):
        clock.sleep(MIN)
        if watch.observe(clock.now(), step).act:
            fired_after = k
            break
    assert fired_after == 30


def test_stall_watch_counts_a_trainer_that_never_writes_a_step():
    clock = FakeClock()
    watch = StallWatch(timeout_s=10 * MIN)
    watch.reset(clock.now())
    clock.sleep(9 * MIN)
    assert not watch.observe(clock.now(), None).act
    clock.sleep(MIN)
    d = watch.observe(clock.now(), None)
    assert d.act and "no step yet" in d.reason


def test_data_preparation_progress_is_not_a_stall():
    """A 1 TB preparation runs for hours before step 1: bytes tokenized count as progress."""
    from artifacts.run import RunState, Status

    def preparing(done: int) -> Status:
        return Status(state=RunState.PREPARING, extra={"data_prep": {"bytes_done": done}})

    clock = FakeClock()
    watch = StallWatch(timeout_s=10 * MIN)
    watch.reset(clock.now())
    for k in range(1, 30):  # 4.5 hours of preparing, moving every 9 minutes
        clock.sleep(9 * MIN)
        assert not watch.observe(clock.now(), 0, preparing_bytes(preparing(k * 10**9))).act
    clock.sleep(10 * MIN)  # the preparation stops moving: a stall like any other
    assert watch.observe(clock.now(), 0, preparing_bytes(preparing(29 * 10**9))).act
    assert preparing_bytes(Status(state=RunState.RUNNING, extra={"data_prep": {}})) is None
    assert preparing_bytes(None) is None


def test_a_relaunch_resets_the_stall_timer():
    clock = FakeClock()
    watch = StallWatch(timeout_s=10 * MIN)
    watch.observe(clock.now(), 5)
    clock.sleep(9 * MIN)
    watch.reset(clock.now())
    clock.sleep(9 * MIN)
    assert not watch.observe(clock.now(), 5).act


def test_budget_caps():
    start = 0.0
    assert not over_budget(3599.0, started_at=start, dollars=10, max_hours=1, max_dollars=None).act
    assert over_budget(3600.0, started_at=start, dollars=10, max_hours=1, max_dollars=None).act
    d = over_budget(60.0, started_at=start, dollars=100.5, max_hours=None, max_dollars=100)
    assert d.act and "$100.50" in d.reason
    assert not over_budget(1e9, started_at=start, dollars=None, max_hours=None, max_dollars=5).act
