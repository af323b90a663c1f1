"""How a run ended when it could not say: the launchers' signal conventions and what gets recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifacts.ending import describe_exit, exit_signal, record_failure, settle
from artifacts.ending import main as ending_cli
from artifacts.errors import ArtifactError
from artifacts.run import ExitCode, Run, RunState, Status
from artifacts.store import LocalStore


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (-9, "rank 1 was killed by signal 9 (SIGKILL)"),
        (247, "rank 1 was killed by signal 9 (SIGKILL; DeepSpeed's launcher exits 256 − 9 = 247)"),
        (241, "rank 1 was killed by signal 15 (SIGTERM; DeepSpeed's launcher exits 256 − 15 = 241)"),
        (137, "rank 1 was killed by signal 9 (SIGKILL; the shell's 128 + 9 = 137)"),
        (134, "rank 1 was killed by signal 6 (SIGABRT; the shell's 128 + 6 = 134)"),
        (1, "rank 1 exited with code 1 without recording why"),
    ],
)
def test_a_launchers_exit_code_names_the_signal(code: int, words: str) -> None:
    assert describe_exit(code, who="rank 1") == words


@pytest.mark.parametrize("code", [0, 1, 2, 3, 75, 100, None])
def test_plain_codes_are_not_signals(code) -> None:
    assert exit_signal(code) is None


def test_a_dead_rank_over_a_running_status_is_failed_keeping_step_and_history() -> None:
    history = ({"step": 10, "epoch": 1.0, "val_loss": 3.0},)
    running = Status(state=RunState.RUNNING, global_step=40, val_loss_history=history)
    failed = settle(running, 247, who="rank 1")
    assert failed.state is RunState.FAILED
    assert failed.reason.startswith("rank 1 was killed by signal 9 (SIGKILL")
    assert failed.global_step == 40 and failed.val_loss_history == history


def test_exit_75_without_a_recorded_interruption_is_interrupted() -> None:
    settled = settle(Status(state=RunState.RUNNING, global_step=8), ExitCode.INTERRUPTED)
    assert settled.state is RunState.INTERRUPTED and "store unreachable?" in settled.reason


def test_the_ranks_own_unwritten_words_win() -> None:
    """The status the trainer could not put in the store (outage) is recorded as it is."""
    own = Status(state=RunState.INTERRUPTED, global_step=9, reason="store outage: checkpoint 8")
    settled = settle(Status(state=RunState.RUNNING, global_step=8), 75, unwritten=own)
    assert settled.reason == "store outage: checkpoint 8" and settled.global_step == 9


@pytest.mark.parametrize(
    "state", [RunState.INTERRUPTED, RunState.FAILED, RunState.CONVERGED, RunState.FINISHED]
)
def test_a_recorded_ending_stands(state: RunState) -> None:
    assert settle(Status(state=state, reason="its own words"), 247) is None


@pytest.mark.parametrize(
    ("code", "state", "words"),
    [
        (2, RunState.FAILED, "user error"),
        (3, RunState.FAILED, "could not start the trainer"),
        (0, RunState.FAILED, "never marked done"),
        (-11, RunState.FAILED, "signal 11 (SIGSEGV)"),
    ],
)
def test_every_other_ending_of_a_live_status(code, state, words) -> None:
    for live in (RunState.PREPARING, RunState.PREPARED, RunState.RUNNING):
        settled = settle(Status(state=live), code)
        assert settled.state is state and words in settled.reason
    assert settle(None, code).state is state  # no status at all


# -- the node script's last word: a failed ending recorded before its code becomes 1 -----------
DS_KILL = (
    "a rank on node 1 was killed by signal 9 (SIGKILL; DeepSpeed's launcher exits 256 − 9 = 247)"
)


def test_the_node_records_a_killed_rank_then_exits_with_the_verdict(tmp_path: Path, capsys) -> None:
    run = Run(str(tmp_path / "r"))
    history = ({"step": 10, "epoch": 1.0, "val_loss": 3.0},)
    run.write_status(Status(state=RunState.RUNNING, global_step=40, val_loss_history=history))

    assert ending_cli(["247", run.uri, "a rank on node 1"]) == ExitCode.FAILED
    st = run.read_status()
    assert (st.state, st.reason) == (RunState.FAILED, DS_KILL)
    assert st.global_step == 40 and st.val_loss_history == history
    out = capsys.readouterr().out
    assert f"recorded in the run's status: failed ({DS_KILL})" in out
    assert "launcher exited 247" in out and "verdict failed (1)" in out


@pytest.mark.parametrize("code", [75, 2, 3])
def test_codes_that_reach_the_controller_unchanged_are_left_to_it(tmp_path: Path, code) -> None:
    """75, 2 and 3 pass through the verdict as they are: the controller records those endings
    (it also knows whether a node was lost, and an outage is not a repeated failure)."""
    run = Run(str(tmp_path / "r"))
    run.write_status(Status(state=RunState.RUNNING, global_step=8))
    assert ending_cli([str(code), run.uri, "a rank on node 0"]) == code
    assert run.read_status().state is RunState.RUNNING


def test_a_done_status_stands_and_so_does_an_unreadable_one(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "r"))
    run.write_status(Status(state=RunState.CONVERGED, global_step=8))
    assert ending_cli(["134", run.uri, "a rank on node 0"]) == ExitCode.OK
    assert run.read_status().state is RunState.CONVERGED
    (tmp_path / "r" / "STATUS.json").write_text("{being rewrit")
    assert record_failure(run, 247, who="a rank on node 0") is None
    assert (tmp_path / "r" / "STATUS.json").read_text() == "{being rewrit"


def test_no_status_yet_gets_one(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "r"))
    assert record_failure(run, 1, who="a rank on node 0").state is RunState.FAILED
    assert run.read_status().reason == "a rank on node 0 exited with code 1 without recording why"


def test_a_store_outage_leaves_the_status_to_the_controller(tmp_path: Path, monkeypatch, capsys):
    """The store is down: nothing is written over a status that could not be read, and the
    node still exits with the verdict (by its exit code alone)."""
    run = Run(str(tmp_path / "r"))
    run.write_status(Status(state=RunState.RUNNING, global_step=8))

    def down(self, *a, **k):
        raise ArtifactError("store unreachable")

    monkeypatch.setattr(LocalStore, "exists", down)
    monkeypatch.setattr(LocalStore, "get_bytes", down)
    assert ending_cli(["247", run.uri, "a rank on node 0"]) == ExitCode.FAILED
    monkeypatch.undo()
    assert run.read_status().state is RunState.RUNNING
    assert "could not record the ending in the run's status (store unreachable)" in (
        capsys.readouterr().err
    )
