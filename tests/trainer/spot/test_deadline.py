"""The notice's deadline: a pure upload decision, the watcher reading it, the callback acting on it."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from fake_imds import FakeIMDS

from trainer.spot.deadline import decide_upload, parse_notice_time
from trainer.spot.notice import InterruptionWatcher

T0 = datetime(2026, 12, 1, 23, 30, tzinfo=UTC).timestamp()
GB = 10**9


def test_notice_time_is_read_from_the_instance_action_document():
    body = b'{"action": "terminate", "time": "2026-12-01T23:30:00Z"}'
    assert parse_notice_time(body) == T0
    assert parse_notice_time({"action": "stop", "time": "2026-12-01T23:30:00+00:00"}) == T0
    assert parse_notice_time("2026-12-01T23:30:00") is None  # not JSON
    assert parse_notice_time(b'{"action": "terminate"}') is None
    assert parse_notice_time(b'{"time": "soon"}') is None
    assert parse_notice_time(None) is None


def test_upload_that_fits_is_kept():
    # 7B on 2 p4d nodes: 49 GB per node at 8 GB/s ≈ 6 s + 8 s save; 110 s left.
    d = decide_upload(
        now=T0 - 120, deadline=T0, checkpoint_bytes=49 * GB, throughput_bps=8 * GB, save_s=8.0
    )
    assert d.upload and d.needed_s == pytest.approx(8 + 49 / 8 + 1, abs=0.1)
    assert d.available_s == pytest.approx(110)
    assert d.reason.startswith("fits")


def test_upload_that_cannot_finish_is_skipped_with_its_numbers():
    # 112 GB through one 1 GB/s uploader: 112 s + save, and only 40 s left.
    d = decide_upload(
        now=T0 - 50, deadline=T0, checkpoint_bytes=112 * GB, throughput_bps=1 * GB, save_s=10.0
    )
    assert not d.upload
    assert d.needed_s == pytest.approx(123) and d.available_s == pytest.approx(40)
    assert "cannot finish" in d.reason and "112.00 GB" in d.reason
    assert "last committed checkpoint" in d.reason
    assert d.to_dict()["bytes"] == 112 * GB


def test_without_a_deadline_or_a_measurement_it_tries():
    assert decide_upload(now=0, deadline=None, checkpoint_bytes=GB, throughput_bps=1).upload
    d = decide_upload(now=0, deadline=5, checkpoint_bytes=None, throughput_bps=None)
    assert d.upload and "no upload measured" in d.reason
    # past the deadline already and a measurement says no
    assert not decide_upload(now=10, deadline=5, checkpoint_bytes=1, throughput_bps=1e9).upload


def test_watcher_keeps_the_deadline_of_the_notice():
    with FakeIMDS() as imds:
        w = InterruptionWatcher(imds.endpoint)
        imds.announce()  # terminate 120 s from now
        assert w.poll_once().startswith("spot terminate at ")
    assert w.deadline is not None
    assert 100 < w.deadline - datetime.now(UTC).timestamp() <= 121


# -- the HF callback ---------------------------------------------------------------------------


def _control():
    return SimpleNamespace(should_save=False, should_training_stop=False, should_evaluate=True)


def _callback(**kw):
    pytest.importorskip("transformers")
    from trainer.spot.callback import InterruptionCallback

    w = InterruptionWatcher("off")
    submitted: set[int] = kw.pop("submitted", set())
    committer = SimpleNamespace(
        wait=lambda: None, expedite=lambda: None, has_submitted=lambda s: s in submitted
    )
    return w, InterruptionCallback(w, committer=committer, **kw)


def test_notice_between_micro_batches_saves_the_last_completed_step():
    w, cb = _callback()
    state = SimpleNamespace(global_step=7)
    assert not cb.on_substep_end(None, state, _control()).should_save
    w.set_notice("spot terminate at T")
    c = cb.on_substep_end(None, state, _control())  # mid-way through step 8's accumulation
    assert c.should_save and c.should_training_stop
    assert cb.interrupted and cb.mid_step and cb.interrupted_at_step == 7
    assert cb.decision.upload


def test_notice_mid_step_after_that_step_was_saved_does_not_rewrite_it():
    w, cb = _callback(submitted={7})
    w.set_notice("SIGTERM received")
    c = cb.on_substep_end(None, SimpleNamespace(global_step=7), _control())
    assert c.should_training_stop and not c.should_save  # its upload may be reading those files
    end = cb.on_epoch_end(None, None, SimpleNamespace(should_save=True, should_evaluate=True))
    assert not end.should_save and not end.should_evaluate


def test_notice_whose_deadline_cannot_be_met_stops_without_saving():
    now = T0 - 30
    w, cb = _callback(
        estimate=lambda: {"checkpoint_bytes": 100 * GB, "throughput_bps": 1 * GB, "save_s": 5.0},
        clock=lambda: now,
    )
    w.set_notice("spot terminate at 2026-12-01T23:30:00Z")
    w.deadline = T0
    c = cb.on_step_end(None, SimpleNamespace(global_step=40), _control())
    assert c.should_training_stop and not c.should_save
    assert not cb.decision.upload and cb.decision.needed_s == pytest.approx(106)
    end = cb.on_epoch_end(None, None, SimpleNamespace(should_save=True, should_evaluate=True))
    assert not end.should_save
    cb.on_train_end(None, None, _control())
    assert cb.notice_to_commit_s is None  # nothing was committed for this notice


# -- an upload in flight when the notice comes ------------------------------------------------


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_periodic_upload_in_flight_is_part_of_the_budget():
    # 7B on 2 nodes: 42 GB per node at 1.4 GB/s (8 × 0.175) = 30 s + 3 s save; a periodic
    # checkpoint with 60 GB... still to go takes another 43 s: 110 s left fits both.
    clock = FakeClock(T0 - 120)
    kw = dict(deadline=T0, checkpoint_bytes=42 * GB, throughput_bps=1.4 * GB, save_s=3.0)
    both = decide_upload(now=clock(), inflight_bytes=60 * GB, **kw)
    assert both.action == "finish-and-save" and both.upload and not both.abandon
    assert both.needed_s == pytest.approx(60 / 1.4 + 1 + 3 + 30 + 1, abs=0.2)

    # 40 s later the same in-flight bytes no longer leave room for both: the newest step wins,
    # the periodic upload is abandoned (its bandwidth goes to the notice's save).
    clock.t += 40
    late = decide_upload(now=clock(), inflight_bytes=60 * GB, **kw)
    assert late.action == "abandon-and-save" and late.upload and late.abandon
    assert "abandon-and-save" in late.reason and "60.00 GB still uploading" in late.reason

    # Where the in-flight upload cannot be stopped (several nodes), finishing it is the best.
    kept = decide_upload(now=clock(), inflight_bytes=60 * GB, can_abandon=False, **kw)
    assert kept.action == "finish-only" and not kept.upload
    assert kept.options["finish-only"] == pytest.approx(60 / 1.4 + 1, abs=0.1)

    # Ignoring the in-flight bytes would have said "fits" for a save that cannot finish.
    clock.t = T0 - 45
    blind = decide_upload(now=clock(), **kw)
    aware = decide_upload(now=clock(), inflight_bytes=60 * GB, can_abandon=False, **kw)
    assert blind.upload and not aware.upload and aware.action == "skip"
    assert "of an earlier upload in flight" in aware.reason


def test_nodes_agree_on_one_action(monkeypatch):
    """Node 1 (in this process) has nothing in flight and could save; another node can only
    finish its in-flight upload: every node must take finish-only, or the head waits forever."""
    import trainer.spot.callback as cbmod

    others = {"finish-and-save": False, "abandon-and-save": False, "finish-only": True}
    asked: list[bool] = []

    def any_rank_true(flag: bool) -> bool:  # this rank's flag OR the other node's
        asked.append(flag)
        if len(asked) > 3:  # after the vote: "is this step already saved?" (no node says so)
            return flag
        action = ("finish-and-save", "abandon-and-save", "finish-only")[len(asked) - 1]
        return flag or not others[action]

    monkeypatch.setattr(cbmod, "any_rank_true", lambda f: f)  # the notice check
    w, cb = _callback(
        estimate=lambda: {"checkpoint_bytes": 10 * GB, "throughput_bps": 1 * GB, "save_s": 1.0},
        clock=lambda: T0 - 100,
    )
    w.set_notice("spot terminate at 2026-12-01T23:30:00Z")
    w.deadline = T0
    monkeypatch.setattr(cbmod, "any_rank_true", any_rank_true)
    c = cb._interrupt(SimpleNamespace(global_step=40), _control(), mid_step=False)
    assert len(asked) == 4  # one vote per agreed action, then "already saved?": the same on every rank
    assert cb.decision.action == "finish-only" and not c.should_save
    assert "its in-flight checkpoint commits" in cb.decision.reason


def test_the_committer_reports_bytes_in_flight_and_abandons_them(tmp_path):
    """A real committer on a one-node run: a queued upload is counted, then abandoned on notice."""
    import threading

    from artifacts.run import Run
    from trainer.checkpoint.committer import CheckpointCommitter

    run = Run(str(tmp_path / "run"))
    committer = CheckpointCommitter(run, node_rank=0, num_nodes=1, keep_last=2,
                                    upload_process=False)  # fmt: skip
    gate = threading.Event()
    real = committer._commit
    committer._commit = lambda *a: (gate.wait(10), real(*a))  # hold the upload in flight
    for step in (10, 20):
        d = tmp_path / f"ckpt-{step}"
        d.mkdir()
        (d / "shard.bin").write_bytes(b"x" * 1000)
        committer.submit(d, step, {})
    assert committer.inflight_bytes() == 2000
    assert committer.estimate()["inflight_bytes"] == 2000
    assert committer.estimate()["can_abandon"] is False  # uploads run in this process
    committer.upload_process = True  # as on a node: queued steps can be dropped
    assert committer.abandon_inflight() == [10, 20]
    gate.set()
    committer.wait(30)
    committer.close()
    assert committer.inflight_bytes() == 0
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").rglob("MANIFEST.json")
    )
