"""Spot interruption watcher: IMDSv2 against a fake metadata server, SIGTERM, the HF callback."""

from __future__ import annotations

import os
import signal
import socket
import time
from types import SimpleNamespace

import pytest
from fake_imds import FakeIMDS

from artifacts.run import ExitCode
from trainer.spot import notice as spot
from trainer.spot.notice import InterruptionWatcher


def wait_for(pred, timeout: float) -> bool:
    """Poll a condition the watcher thread sets (no event to await across its HTTP loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.fixture
def imds():
    with FakeIMDS() as server:
        yield server


def test_exit_code_is_75():
    assert ExitCode.INTERRUPTED == 75


def test_no_notice_while_metadata_says_404(imds):
    w = InterruptionWatcher(imds.endpoint, poll_interval=0.05)
    w.start()
    try:
        assert wait_for(lambda: w.polls >= 3, 5)
        assert w.notice is None and w.noticed_at is None
    finally:
        w.stop()
    # every poll went through the token: the fake answers 401 to requests without one
    assert imds.rejected == 0
    assert any(m == "PUT" for m, _, _ in imds.requests)


def test_notice_within_one_poll_interval(imds):
    w = InterruptionWatcher(imds.endpoint, poll_interval=0.2)
    w.start()
    try:
        assert wait_for(lambda: w.polls >= 1, 5)
        imds.announce()
        t0 = time.time()
        assert wait_for(lambda: w.notice is not None, 3)
        assert w.noticed_at - t0 <= 0.2 + 1.0  # one interval plus one round trip's slack
        assert w.notice.startswith("spot terminate at ")
    finally:
        w.stop()


def test_imdsv2_token_is_sent_and_required(imds):
    w = InterruptionWatcher(imds.endpoint)
    imds.announce()
    assert w.poll_once() is not None
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert gets and all(valid for _, _, valid in gets)
    # a client that skips the token (IMDSv1 style) is refused, like on an IMDSv2-only instance
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(imds.endpoint + "/latest/meta-data/spot/instance-action", timeout=2)
    assert err.value.code == 401


def test_expired_token_is_refreshed(imds):
    w = InterruptionWatcher(imds.endpoint)
    assert w.poll_once() is None
    imds.tokens.clear()  # the service forgot the token (expiry / restart)
    assert w.poll_once() is None  # 401 → drop token
    imds.announce()
    assert w.poll_once() is not None


def test_unreachable_endpoint_stops_polling_quietly(caplog):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = InterruptionWatcher(f"http://127.0.0.1:{port}", poll_interval=0.05)
    with caplog.at_level("INFO", logger="trainer.spot.notice"):
        w.start()
        w._thread.join(timeout=5)
    assert not w._thread.is_alive()
    assert w.polls == spot.GIVE_UP_AFTER  # a few tries, then quiet: no retry storm
    assert "unreachable" in caplog.text
    w.stop()


def test_endpoint_from_env_and_off_switch(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_IMDS_ENDPOINT", "http://127.0.0.1:9/")
    assert InterruptionWatcher().endpoint == "http://127.0.0.1:9"
    monkeypatch.setenv("TWOSTAGE_IMDS_ENDPOINT", "off")
    assert InterruptionWatcher().endpoint is None
    monkeypatch.delenv("TWOSTAGE_IMDS_ENDPOINT")
    monkeypatch.setattr(spot, "on_ec2", lambda: False)
    assert InterruptionWatcher().endpoint is None  # a laptop / CI box: no polling
    monkeypatch.setattr(spot, "on_ec2", lambda: True)
    assert InterruptionWatcher().endpoint == "http://169.254.169.254"


def test_sigterm_becomes_a_notice_and_is_restored(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_IMDS_ENDPOINT", "off")
    before = signal.getsignal(signal.SIGTERM)
    w = InterruptionWatcher().start()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the handler
        assert w.notice == "SIGTERM received"
        assert w.noticed_at is not None
    finally:
        w.stop()
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_chains_a_previous_python_handler(monkeypatch):
    monkeypatch.setenv("TWOSTAGE_IMDS_ENDPOINT", "off")
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        w = InterruptionWatcher().start()
        os.kill(os.getpid(), signal.SIGTERM)
        assert w.notice is not None and seen == [signal.SIGTERM]
        w.stop()
    finally:
        signal.signal(signal.SIGTERM, old)


# -- the HF callback, without DeepSpeed --------------------------------------------------------


def _control():
    return SimpleNamespace(should_save=False, should_training_stop=False)


def test_callback_saves_and_stops_on_notice(monkeypatch):
    pytest.importorskip("transformers")
    from trainer.spot.callback import InterruptionCallback

    monkeypatch.setenv("TWOSTAGE_IMDS_ENDPOINT", "off")
    w = InterruptionWatcher()
    committed = []
    cb = InterruptionCallback(w, committer=SimpleNamespace(wait=lambda: committed.append(1)))
    state = SimpleNamespace(global_step=7)
    c = cb.on_step_end(None, state, _control())
    assert not c.should_save and not c.should_training_stop and not cb.interrupted
    w.set_notice("spot terminate at T")
    state.global_step = 8
    c = cb.on_step_end(None, state, _control())
    assert c.should_save and c.should_training_stop
    assert cb.interrupted and cb.interrupted_at_step == 8
    # the loop break still runs on_epoch_end: no evaluation of the partial epoch
    epoch_end = SimpleNamespace(should_evaluate=True, should_save=False)
    assert cb.on_epoch_end(None, state, epoch_end).should_evaluate is False
    cb.on_train_end(None, state, _control())
    assert committed == [1] and cb.notice_to_commit_s is not None


def _gloo_rank(rank: int, world: int, port: int, notice_on: int, out: dict) -> None:
    import torch.distributed as dist

    from trainer.spot.callback import InterruptionCallback

    dist.init_process_group(
        "gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}"
    )
    try:
        w = InterruptionWatcher("off")
        if rank == notice_on:
            w.set_notice("spot terminate")
        c = InterruptionCallback(w).on_step_end(None, SimpleNamespace(global_step=3), _control())
        out[rank] = (c.should_save, c.should_training_stop, w.notice)
    finally:
        dist.destroy_process_group()


def test_callback_all_ranks_agree_through_all_reduce():
    """Only rank 1 was notified; rank 0 must stop at the same step (2 gloo ranks, threads)."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    # One process group per process: two spawned ranks on gloo.
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mgr = mp.get_context("spawn").Manager()
    out = mgr.dict()
    mp.spawn(_gloo_rank_entry, args=(2, port, 1, out), nprocs=2, join=True)  # raises on failure
    res = dict(out)
    mgr.shutdown()
    assert res[0][:2] == (True, True) and res[1][:2] == (True, True)
    assert res[0][2] == "another rank was notified"


def _gloo_rank_entry(rank: int, world: int, port: int, notice_on: int, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    _gloo_rank(rank, world, port, notice_on, out)
