"""STATUS.json tells the truth across launches: a rank that died reads ``failed`` with the reason
(the launcher writes it, step and history kept), and the launcher's last line says how to resume."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from artifacts.ending import STATUS_FALLBACK_ENV
from artifacts.run import ExitCode, Run, RunState, Status
from trainer.data import prepare
from trainer.launch import single_node

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "pretrain-tiny.toml"


class DeadLauncher:
    """A launcher process whose rank was killed: ``wait()`` returns ``rc``."""

    def __init__(self, rc: int) -> None:
        self.rc = rc
        self.pid = 999_999

    def wait(self, timeout: float | None = None) -> int:
        return self.rc


@pytest.mark.parametrize(
    ("rc", "reason"),
    [
        (-9, "killed by signal 9 (SIGKILL)"),
        (247, "killed by signal 9 (SIGKILL; DeepSpeed's launcher exits 256 − 9 = 247)"),
        (1, "exited with code 1 without recording why"),
    ],
)
def test_a_dead_rank_reads_failed_with_the_reason_and_the_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, rc: int, reason: str
) -> None:
    run = Run(str(tmp_path / "run"))
    history = ({"step": 12, "epoch": 1.0, "val_loss": 4.2},)
    run.write_status(
        Status(state=RunState.RUNNING, global_step=40, val_loss_history=history, world_size=2)
    )
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: DeadLauncher(rc))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)  # the cache is there
    with caplog.at_level(logging.INFO, logger="trainer.launch.single_node"):
        code = single_node.launch_local(TINY, run.uri, nproc=2)
    assert code == ExitCode.FAILED
    status = run.read_status()
    assert status.state is RunState.FAILED and reason in status.reason
    assert status.global_step == 40 and [dict(e) for e in status.val_loss_history] == list(history)
    last = caplog.records[-1].getMessage()
    assert f"invoke pretrain --local --config {TINY} --run {run.uri} --nproc 2" in last
    assert reason in last


def test_an_interrupted_run_is_not_rewritten(tmp_path: Path, monkeypatch, caplog) -> None:
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.INTERRUPTED, global_step=8, reason="store outage: x"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: DeadLauncher(75))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger="trainer.launch.single_node"):
        assert single_node.launch_local(TINY, run.uri, nproc=1) == ExitCode.INTERRUPTED
    assert run.read_status().reason == "store outage: x"
    assert "store outage: x" in caplog.records[-1].getMessage()
    assert "--nproc 1" in caplog.records[-1].getMessage()


def test_exit_75_over_a_running_status_records_the_ranks_handed_over_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Measured: a store outage past the window exited 75 with STATUS "running" and the launcher
    printing "interrupted (no reason recorded)". Rank 0 hands its unwritten status over."""
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.RUNNING, global_step=40, world_size=2))
    own = Status(state=RunState.INTERRUPTED, global_step=40, reason="store outage: checkpoint 40")

    def popen(cmd, env, **kw):
        Path(env[STATUS_FALLBACK_ENV]).write_text(own.to_json())  # what rank 0 could not write
        return DeadLauncher(75)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger="trainer.launch.single_node"):
        assert single_node.launch_local(TINY, run.uri, nproc=2) == ExitCode.INTERRUPTED
    status = run.read_status()
    assert status.state is RunState.INTERRUPTED and status.reason == own.reason
    assert "store outage: checkpoint 40" in caplog.records[-1].getMessage()


def test_exit_75_with_nothing_handed_over_still_reads_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.RUNNING, global_step=40))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: DeadLauncher(75))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger="trainer.launch.single_node"):
        assert single_node.launch_local(TINY, run.uri, nproc=2) == ExitCode.INTERRUPTED
    status = run.read_status()
    assert status.state is RunState.INTERRUPTED and "exited 75" in status.reason
    assert "no reason recorded" not in caplog.records[-1].getMessage()


FAKE_RANK = """
import os, pathlib, signal, sys, time
def save_and_leave(signum, frame):  # like the trainer: SIGTERM -> save, commit, exit 75
    time.sleep(0.5)
    sys.exit(75)
signal.signal(signal.SIGTERM, save_and_leave)
pathlib.Path(os.environ["FAKE_RANK_DIR"], f"rank-{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(300)
"""


@pytest.mark.slow
def test_a_sigkilled_rank_is_named_with_its_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured: kill -9 of a rank read "a rank exited with code 247 without recording why" in
    7 of 7 kills. The real DeepSpeed launcher runs two stand-in ranks; rank 1 gets SIGKILL."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_rank.py").write_text(FAKE_RANK)
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{ROOT}")
    monkeypatch.setenv("FAKE_RANK_DIR", str(tmp_path))
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.RUNNING, global_step=40, world_size=2))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    real_command = single_node.launcher_command

    def command(config, run_uri, nproc, port):
        cmd = real_command(config, run_uri, nproc, port)
        return cmd[: cmd.index("--module") + 1] + ["fake_rank"]

    monkeypatch.setattr(single_node, "launcher_command", command)
    both_seen = threading.Event()
    real_poll = single_node.RankWatch.poll

    def poll(self) -> None:
        real_poll(self)
        if len(self.seen) == 2:
            both_seen.set()

    monkeypatch.setattr(single_node.RankWatch, "poll", poll)

    def kill_rank_1() -> None:
        pid_file = tmp_path / "rank-1.pid"
        deadline = time.monotonic() + 120
        while not (both_seen.is_set() and pid_file.is_file() and pid_file.read_text()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    assert single_node.launch_local(TINY, run.uri, nproc=2) == ExitCode.FAILED
    killer.join(5)
    status = run.read_status()
    assert status.state is RunState.FAILED and status.global_step == 40
    assert status.reason == (
        "rank 1 was killed by signal 9 (SIGKILL; DeepSpeed's launcher exits 256 − 9 = 247)"
    )


def test_a_rank_dead_while_preparing_data_reads_failed(tmp_path: Path, monkeypatch) -> None:
    """The trainer prepares data before training; dying there must not leave "preparing" forever."""
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.PREPARING, extra={"data_prep": {"bytes_done": 5}}))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: DeadLauncher(-9))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    assert single_node.launch_local(TINY, run.uri, nproc=1) == ExitCode.FAILED
    status = run.read_status()
    assert status.state is RunState.FAILED and "signal 9" in status.reason
