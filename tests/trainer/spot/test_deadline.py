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
