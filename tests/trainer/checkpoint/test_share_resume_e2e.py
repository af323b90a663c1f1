"""Two "nodes" on this machine (torchrun, one CPU rank each, a scratch folder each): after a loss,
the survivor resumes from its own local copy (downloads nothing) and the replacement fetches only
its own rank's share — and DeepSpeed's ZeRO-3 load works from those files alone, continuing the
losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_elastic_e2e import ROOT, SAVE, losses, recipe

from artifacts.ports import free_port
from artifacts.run import ExitCode
from trainer.launch.single_node import launch_local, launcher_env

pytestmark = pytest.mark.slow


def two_nodes(config: Path, run: Path, tmp_path: Path) -> list[int]:
    """``torchrun --nnodes 2`` twice, node i with scratch ``tmp_path/node<i>``."""
    port = free_port()
    procs = []
    for node in (0, 1):
        env = {**launcher_env(), "TWOSTAGE_SCRATCH": str(tmp_path / f"node{node}")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "--module", "trainer", "--config", str(config),
               "--run-uri", str(run)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
    return [p.wait(timeout=900) for p in procs]


def test_survivor_reuses_its_copy_and_the_replacement_fetches_only_its_share(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TWOSTAGE_SCRATCH", str(tmp_path / "ref-scratch"))
    reference = tmp_path / "reference"
    assert launch_local(recipe(tmp_path, 2 * SAVE), str(reference), nproc=2) == ExitCode.OK

    run = tmp_path / "run"
    assert two_nodes(recipe(tmp_path, SAVE), run, tmp_path) == [0, 0]
    shutil.rmtree(tmp_path / "node1")  # node 1 was lost; its replacement has an empty disk
    assert two_nodes(recipe(tmp_path, 2 * SAVE), run, tmp_path) == [0, 0]

    status = json.loads((run / "STATUS.json").read_text())
    fetch = status["resumed"]["fetch"]  # node 0's (rank 0 writes STATUS): the survivor
    assert fetch["step"] == SAVE and fetch["ranks"] == [0]
    assert fetch["downloaded_bytes"] == 0 and fetch["reused_bytes"] == fetch["share_bytes"] > 0
    assert fetch["share_bytes"] < 0.6 * fetch["total_bytes"]

    (replacement,) = (tmp_path / "node1").glob(f"*/resume/checkpoint-{SAVE}")
    names = {p.name for p in replacement.rglob("*") if p.is_file()}
    assert any("zero_pp_rank_1_" in n for n in names) and "rng_state_1.pth" in names
    assert not any("zero_pp_rank_0_" in n for n in names) and "rng_state_0.pth" not in names

    got, want = losses(run), losses(reference)
    for step in range(SAVE + 1, 2 * SAVE + 1):  # same world size, same global batch
        assert abs(got[step][0] - want[step][0]) <= 0.01 * want[step][0], step
    assert os.path.exists(run / "final" / "MANIFEST.json")
