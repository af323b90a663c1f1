"""`invoke export-checkpoint`: bad input is one line and exit 2, before anything is downloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.checkpoint.export import export_checkpoint, pick_step
from trainer.errors import TrainerError

ROOT = Path(__file__).resolve().parents[3]


def test_pick_step():
    assert pick_step([4, 8, 12], None, "r") == 12
    assert pick_step([4, 8, 12], 8, "r") == 8
    with pytest.raises(TrainerError, match=r"step 5 has no committed checkpoint .*4, 8, 12"):
        pick_step([4, 8, 12], 5, "r")
    with pytest.raises(TrainerError, match="no committed checkpoint to export"):
        pick_step([], None, "r")


def test_export_refuses_a_non_empty_destination_and_a_run_without_checkpoints(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TrainerError, match="not empty; pass --force"):
        export_checkpoint(str(tmp_path / "run"), out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(TrainerError, match="no committed checkpoint"):
        export_checkpoint(str(tmp_path / "run"), tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("step", "message"), [("abc", "give a global step number"), ("7", "no committed checkpoint")]
)
def test_task_errors_are_one_line_and_exit_2(tmp_path, step, message):
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "export-checkpoint", "--run", str(tmp_path / "run"),
         "--step", step, "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
