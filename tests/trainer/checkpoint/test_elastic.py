"""Elastic resume, fast parts: checkpoint facts from a manifest, the launcher's early refusal,
RNG files for new ranks, universal forms pruned with their checkpoints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from artifacts.manifest import MANIFEST_NAME
from artifacts.publish import publish_dir
from artifacts.run import Run
from trainer.checkpoint.elastic import (
    adapt_rng_files,
    elastic_metadata,
    enable_universal_load,
    is_universal,
    newest_checkpoint_facts,
    prune_universal,
    shard_world_size,
    universal_uri,
)
from trainer.errors import TrainerError

ROOT = Path(__file__).resolve().parents[3]


def fake_checkpoint(folder: Path, step: int, world: int) -> Path:
    """An HF+DeepSpeed-shaped checkpoint folder written by ``world`` ranks."""
    for r in range(world):
        shard = folder / f"global_step{step}" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(b"x" * 16)
        (
            folder / f"global_step{step}" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
        ).write_bytes(b"m")
        (folder / (f"rng_state_{r}.pth" if world > 1 else "rng_state.pth")).write_bytes(bytes([r]))
    (folder / "latest").write_text(f"global_step{step}")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def commit(run: Run, tmp_path: Path, step: int, world: int, meta: dict | None = None) -> None:
    src = fake_checkpoint(tmp_path / "src" / str(step), step, world)
    publish_dir(
        src, run.child_uri(run.checkpoint(step)), metadata={"global_step": step, **(meta or {})}
    )


def test_facts_come_from_the_newest_manifest_alone(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "run"))
    assert newest_checkpoint_facts(run) is None
    commit(run, tmp_path, 10, 2)  # an older checkpoint without elastic metadata: shards counted
    facts = newest_checkpoint_facts(run)
    assert (facts.step, facts.world_size, facts.global_batch) == (10, 2, None)
    meta = elastic_metadata(world=1, per_device=16, grad_accum=2)
    commit(run, tmp_path, 20, 1, meta)
    facts = newest_checkpoint_facts(run)
    assert (facts.step, facts.world_size, facts.global_batch) == (20, 1, 32)


def test_shard_world_size_counts_ranks_of_a_local_folder(tmp_path: Path) -> None:
    assert shard_world_size(fake_checkpoint(tmp_path / "c", 40, 4)) == 4
    assert shard_world_size(tmp_path / "empty") is None


def test_the_launcher_refuses_an_impossible_global_batch_before_starting_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.launch import single_node

    run = Run(str(tmp_path / "run"))
    commit(run, tmp_path, 10, 2, elastic_metadata(world=2, per_device=16, grad_accum=1))

    def no_launch(*a, **k):
        raise AssertionError("ranks were started")

    monkeypatch.setattr(subprocess, "Popen", no_launch)
    with pytest.raises(TrainerError, match=r"global batch of 32, which cannot be held on 3 rank"):
        single_node.launch_local(ROOT / "configs" / "pretrain-tiny.toml", run.uri, nproc=3)


def test_the_cli_prints_the_refusal_in_one_line_with_exit_2(tmp_path: Path) -> None:
    import os
    import sys

    run = Run(str(tmp_path / "run"))
    commit(run, tmp_path, 10, 2, elastic_metadata(world=2, per_device=16, grad_accum=1))
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "pretrain", "--local", "--nproc", "3", "--run", run.uri],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "global batch" in line]
    assert len(lines) == 1 and "allow_global_batch_change" in lines[0]
    assert "Traceback" not in proc.stderr


def test_each_new_rank_gets_an_old_ranks_rng_state(tmp_path: Path) -> None:
    two = fake_checkpoint(tmp_path / "two", 10, 2)
    adapt_rng_files(two, rank=0, world=1, source_world=2)  # 2 -> 1
    assert (two / "rng_state.pth").read_bytes() == (two / "rng_state_0.pth").read_bytes()
    one = fake_checkpoint(tmp_path / "one", 10, 1)
    for rank in range(3):  # 1 -> 3
        adapt_rng_files(one, rank=rank, world=3, source_world=1)
        assert (one / f"rng_state_{rank}.pth").read_bytes() == b"\x00"
    (two / "rng_state_0.pth").write_bytes(b"keep")
    adapt_rng_files(two, rank=0, world=2, source_world=1)  # never overwrites
    assert (two / "rng_state_0.pth").read_bytes() == b"keep"


def test_universal_forms_go_when_their_checkpoint_is_pruned(tmp_path: Path) -> None:
    from artifacts.retention import prune_committed

    run = Run(str(tmp_path / "run"))
    for step in (10, 20):
        commit(run, tmp_path, step, 2)
        uni = tmp_path / "uni" / str(step)
        uni.mkdir(parents=True)
        (uni / "latest_universal").write_text(f"global_step{step}_universal")
        publish_dir(uni, universal_uri(run, step))
    prune_committed(run.checkpoints_uri, 1)  # retention keeps step 20 only
    gone = prune_universal(run)
    assert gone == [run.universal_checkpoint(10)]
    assert not run.store.exists(f"{run.universal_checkpoint(10)}/{MANIFEST_NAME}")
    assert run.store.exists(f"{run.universal_checkpoint(20)}/{MANIFEST_NAME}")
    assert is_universal(tmp_path / "uni" / "20")


def test_universal_load_is_switched_on_in_the_deepspeed_config() -> None:
    ds = {"zero_optimization": {"stage": 3}}
    enable_universal_load(ds)
    assert ds["checkpoint"] == {"load_universal": True}
