"""Store outages, fast parts: the retry window (fake clock), the committer retrying while
training goes on and stopping past the window, the status written off the training path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from artifacts.errors import ArtifactError, VerificationError
from artifacts.run import Run, RunState
from trainer.checkpoint.committer import CheckpointCommitter
from trainer.checkpoint.outage import StoreOutageError, is_transient, retry_through_outage
from trainer.status import StatusWriter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def flaky(failures: int, clock: FakeClock | None = None, err: Exception | None = None):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise err or ArtifactError("s3://b/k: cannot reach the S3 endpoint")
        return "ok"

    return fn, calls


def test_an_outage_shorter_than_the_window_is_retried_through() -> None:
    clock = FakeClock()
    fn, calls = flaky(8)
    out = retry_through_outage(fn, what="x", window=900, sleep=clock.sleep, clock=clock)
    assert out == "ok" and calls["n"] == 9
    assert clock.now > 60  # a minute-long outage: far past boto3's ~13 s
    assert max(clock.sleeps) <= 30  # capped backoff


def test_past_the_window_it_stops_with_a_store_outage_error() -> None:
    clock = FakeClock()
    fn, _ = flaky(10_000)
    with pytest.raises(
        StoreOutageError, match=r"unreachable for 900 s .*store_outage_minutes = 15"
    ):
        retry_through_outage(fn, what="checkpoint 40", window=900, sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(900)


def test_a_bug_or_a_failed_verification_is_not_weather() -> None:
    clock = FakeClock()
    for err in (TypeError("bug"), VerificationError("sha256 mismatch")):
        fn, calls = flaky(1, err=err)
        with pytest.raises(type(err)):
            retry_through_outage(fn, what="x", window=900, sleep=clock.sleep, clock=clock)
        assert calls["n"] == 1
    assert is_transient(ConnectionResetError()) and is_transient(ArtifactError("503"))


# -- the committer ------------------------------------------------------------------------------


def checkpoint(tmp_path: Path, step: int) -> Path:
    folder = tmp_path / "out" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 100)
    return folder


def test_a_failing_upload_keeps_retrying_while_submits_return_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.checkpoint.commit as commit_mod  # where publish_part is looked up

    real = commit_mod.publish_part
    down_until = time.monotonic() + 2.5  # longer than one backoff round

    def publish_part(*a, **k):
        if time.monotonic() < down_until:
            raise ArtifactError("s3://b/k: upload failed: connection reset")
        return real(*a, **k)

    monkeypatch.setattr(commit_mod, "publish_part", publish_part)
    run = Run(str(tmp_path / "run"))
    c = CheckpointCommitter(
        run, node_rank=0, num_nodes=1, keep_last=3, upload_process=False, outage_window=60
    )
    started = time.monotonic()
    c.submit(checkpoint(tmp_path, 10), 10, {})
    c.submit(checkpoint(tmp_path, 20), 20, {})  # training goes on: no error, no wait
    assert time.monotonic() - started < 1.0
    c.close()
    assert c.committed_steps[-1] == 20
    assert run.store.exists(f"{run.checkpoint(20)}/MANIFEST.json")


def test_past_the_window_the_committer_raises_store_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.checkpoint.commit as commit_mod  # where publish_part is looked up

    def publish_part(*a, **k):
        raise ArtifactError("s3://b/k: cannot reach the S3 endpoint")

    monkeypatch.setattr(commit_mod, "publish_part", publish_part)
    c = CheckpointCommitter(
        Run(str(tmp_path / "run")),
        node_rank=0,
        num_nodes=1,
        keep_last=3,
        upload_process=False,
        outage_window=1.0,
    )
    c.submit(checkpoint(tmp_path, 10), 10, {})
    with pytest.raises(StoreOutageError):
        c.wait(timeout=30)


# -- the status writer --------------------------------------------------------------------------


class SlowStore:
    """A run whose status writes block until released, counting what was written."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.gate = threading.Event()
        self.written: list[int] = []

    def __call__(self, status) -> None:
        self.gate.wait(30)
        self.written.append(status.global_step)


def test_status_writes_never_block_and_coalesce(tmp_path: Path, monkeypatch) -> None:
    run = Run(str(tmp_path / "run"))
    slow = SlowStore(run)
    monkeypatch.setattr(Run, "write_status", lambda self, status: slow(status))
    w = StatusWriter(run, enabled=True, node_count=1, world_size=2)
    started = time.monotonic()
    for step in range(1, 51):
        w.write(RunState.RUNNING, global_step=step)
    assert time.monotonic() - started < 0.5  # the store is stuck; training is not
    slow.gate.set()
    w.close(timeout=10)
    assert slow.written[-1] == 50 and len(slow.written) < 50


def test_step_and_history_survive_a_relaunch(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "run"))
    first = StatusWriter(run, enabled=True, node_count=1, world_size=2)
    history = [{"step": 12, "epoch": 1.0, "val_loss": 4.5}]
    first.write(RunState.RUNNING, global_step=40, epoch=3.3, val_loss_history=history)
    first.write(RunState.INTERRUPTED, global_step=40, reason="spot interruption notice")
    first.close()
    again = StatusWriter(run, enabled=True, node_count=1, world_size=1)
    again.write(RunState.RUNNING, world_size=1)
    again.close()
    status = run.read_status()
    assert status.state == "running" and status.global_step == 40
    assert [dict(e) for e in status.val_loss_history] == history
    assert [x["world_size"] for x in status.extra["launches"]] == [2, 1]


class DownStore:
    """The run's status writes fail like an unreachable S3 endpoint while ``down`` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.down.set()
        self.real = Run.write_status

    def __call__(self, run: Run, status) -> None:
        if self.down.is_set():
            raise ArtifactError(f"{run.uri}/STATUS.json: cannot reach the S3 endpoint")
        self.real(run, status)


def _await_log(caplog, words: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(words in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, f"no log line with {words!r}"
        time.sleep(0.02)


def test_an_interruption_outlasting_the_window_is_still_written_before_exit(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """Measured: an outage past the window (80 s, window 1 min; back 10 s before the exit) left
    "running" behind: the retry that gave up dropped the "interrupted" written meanwhile."""
    run = Run(str(tmp_path / "run"))
    store = DownStore()
    monkeypatch.setattr(Run, "write_status", lambda self, status: store(self, status))
    w = StatusWriter(run, enabled=True, node_count=1, world_size=2, outage_window=0.3)
    w.write(RunState.RUNNING, global_step=40)
    w.write(RunState.INTERRUPTED, global_step=40, reason="store outage: checkpoint 40")
    _await_log(caplog, "status not written")  # one retry window is over
    store.down.clear()  # the store is back before the process exits
    w.close(timeout=20)
    status = run.read_status()
    assert status is not None and status.state is RunState.INTERRUPTED
    assert status.reason == "store outage: checkpoint 40" and status.global_step == 40


def test_a_status_the_store_never_took_is_handed_to_the_launcher(
    tmp_path: Path, monkeypatch
) -> None:
    from artifacts.ending import STATUS_FALLBACK_ENV
    from artifacts.run import Status

    run = Run(str(tmp_path / "run"))
    store = DownStore()
    monkeypatch.setattr(Run, "write_status", lambda self, status: store(self, status))
    handover = tmp_path / "handover.json"
    monkeypatch.setenv(STATUS_FALLBACK_ENV, str(handover))
    w = StatusWriter(run, enabled=True, node_count=1, world_size=2, outage_window=0.2)
    w.write(RunState.INTERRUPTED, global_step=40, reason="store outage: checkpoint 40")
    w.close(timeout=0.5)  # the store is still down at exit
    left = Status.from_json(handover.read_text())
    assert left.state is RunState.INTERRUPTED and left.reason == "store outage: checkpoint 40"
    w._thread.join(timeout=20)  # the writer gave up: a late write never lands over a newer one
    assert not w._thread.is_alive()
    store.down.clear()
    assert run.read_status() is None
