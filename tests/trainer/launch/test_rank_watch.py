"""The rank watch names the rank that ended first, not a rank's own child that ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainer.launch.rank_watch import RankWatch

# A stand-in launcher: two ranks (RANK in their environment, as DeepSpeed's launch.py sets it).
# Rank 0 starts a helper of its own (an uploader, a data worker: it inherits RANK=0) that exits
# as soon as the file GO exists; both ranks then run until killed.
LAUNCHER = """
import os, subprocess, sys
go = sys.argv[1]
helper = f"import os, time\\nwhile not os.path.exists({go!r}): time.sleep(0.02)"
rank0 = f"import subprocess, sys, time\\nsubprocess.Popen([sys.executable, '-c', {helper!r}])\\ntime.sleep(600)"
ranks = [subprocess.Popen([sys.executable, "-c", rank0], env={**os.environ, "RANK": "0"}),
         subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                          env={**os.environ, "RANK": "1"})]
sys.exit(max(p.wait() for p in ranks))
"""


def _until(pred, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def launcher(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "go")], env=env, start_new_session=True
    )
    yield proc, tmp_path / "go"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_the_first_rank_to_end_is_named_and_a_ranks_child_is_not_a_rank(launcher):
    proc, go = launcher
    watch = RankWatch(proc.pid)

    def polled_all_three() -> bool:
        watch.poll()
        return len(_tree(proc.pid)) == 3 and len(watch.seen) + len(watch.not_ranks) == 3

    _until(polled_all_three, "the two ranks and rank 0's helper")
    assert sorted(watch.seen.values()) == [0, 1]  # the helper, RANK=0 by inheritance, is not one
    helper = next(iter(watch.not_ranks))
    go.touch()
    _until(lambda: not psutil.pid_exists(helper) or psutil.Process(helper).status() == "zombie",
           "the helper's exit")  # fmt: skip
    watch.poll()
    assert watch.first_gone == [] and watch.who() == "a rank"

    rank1 = next(pid for pid, rank in watch.seen.items() if rank == 1)
    os.kill(rank1, signal.SIGKILL)
    _until(lambda: (watch.poll(), watch.first_gone)[1] != [], "rank 1 to be seen gone")
    assert watch.who() == "rank 1"


def test_the_command_writes_the_name_for_the_node_script(launcher, tmp_path):
    proc, _ = launcher
    out = tmp_path / "first_rank_gone"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "trainer.launch.rank_watch", str(proc.pid), str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # A real rank trains for a while before it dies: kill rank 1 once the watch has it.
        for line in watcher.stderr:
            if line.startswith("rank_watch: watching rank(s) 0, 1 "):
                break
        rank1 = next(p for p in _tree(proc.pid) if p.environ().get("RANK") == "1")
        rank1.send_signal(signal.SIGKILL)
        assert watcher.wait(timeout=60) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert out.read_text() == "rank 1\n"
    assert not list(tmp_path.glob(".first_rank_gone.*"))  # written whole, by a rename
