"""STATUS.json tells the truth across launches: a rank that died reads ``failed`` with the reason
(the launcher writes it, step and history kept), and the launcher's last line says how to resume."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

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

    def wait(self) -> int:
        return self.rc


@pytest.mark.parametrize(
    ("rc", "reason"), [(-9, "killed by signal 9"), (247, "exited with code 247")]
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


def test_a_rank_dead_while_preparing_data_reads_failed(tmp_path: Path, monkeypatch) -> None:
    """The trainer prepares data before training; dying there must not leave "preparing" forever."""
    run = Run(str(tmp_path / "run"))
    run.write_status(Status(state=RunState.PREPARING, extra={"data_prep": {"bytes_done": 5}}))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: DeadLauncher(-9))
    monkeypatch.setattr(prepare, "prepare_run", lambda *a, **k: None)
    assert single_node.launch_local(TINY, run.uri, nproc=1) == ExitCode.FAILED
    status = run.read_status()
    assert status.state is RunState.FAILED and "signal 9" in status.reason
