"""Resume: newest committed checkpoint, verified; incomplete ignored; corrupted → previous."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from artifacts.manifest import MANIFEST_NAME
from artifacts.publish import publish_dir
from artifacts.run import Run, step_folder
from artifacts.store import open_store
from trainer.checkpoint.resume import agree_resume_checkpoint, find_resume_checkpoint

SHARD = "global_step{s}/zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(params=["local", "moto"])
def run_uri(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store" / "run")
        return
    import boto3
    from moto import mock_aws

    bucket = f"resume-{uuid.uuid4().hex[:10]}"
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/runs/r1"


def commit(run_uri: str, tmp_path: Path, step: int) -> bytes:
    """Publish a small HF-shaped checkpoint for ``step``; returns its shard bytes."""
    src = tmp_path / "src" / str(step)
    shard = src / SHARD.format(s=step)
    shard.parent.mkdir(parents=True)
    data = os.urandom(1024)
    shard.write_bytes(data)
    (src / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    publish_dir(src, f"{run_uri}/checkpoints/{step_folder(step)}", metadata={"global_step": step})
    return data


def test_no_checkpoint_means_start_fresh(run_uri, tmp_path):
    assert find_resume_checkpoint(Run(run_uri), tmp_path / "out") is None


def test_latest_committed_wins_and_lands_in_hf_layout(run_uri, tmp_path):
    commit(run_uri, tmp_path, 10)
    data = commit(run_uri, tmp_path, 20)
    # an upload that never finished (no manifest) is newer but must be ignored
    open_store(run_uri).put_bytes(f"checkpoints/{step_folder(30)}/{SHARD.format(s=30)}", b"partial")
    found = find_resume_checkpoint(Run(run_uri), tmp_path / "out")
    assert found is not None
    path, meta = found
    assert path == tmp_path / "out" / "checkpoint-20"
    assert meta["global_step"] == 20
    assert (path / SHARD.format(s=20)).read_bytes() == data
    assert (path / "trainer_state.json").exists() and (path / MANIFEST_NAME).exists()


def test_corrupted_latest_falls_back_with_a_warning(run_uri, tmp_path, caplog):
    commit(run_uri, tmp_path, 10)
    commit(run_uri, tmp_path, 20)
    key = f"checkpoints/{step_folder(20)}/{SHARD.format(s=20)}"
    open_store(run_uri).put_bytes(key, os.urandom(1024))  # same size, different bytes
    with caplog.at_level("WARNING", logger="trainer.checkpoint.resume"):
        path, meta = find_resume_checkpoint(Run(run_uri), tmp_path / "out")
    assert meta["global_step"] == 10 and path.name == "checkpoint-10"
    assert step_folder(20) in caplog.text and "falling back" in caplog.text
    assert "sha256 mismatch" in caplog.text
    assert not (tmp_path / "out" / "checkpoint-20").exists()  # nothing half-written left behind


def test_unreadable_manifest_falls_back(tmp_path, caplog):
    run = str(tmp_path / "run")
    commit(run, tmp_path, 10)
    commit(run, tmp_path, 20)
    open_store(run).put_bytes(f"checkpoints/{step_folder(20)}/{MANIFEST_NAME}", b'{"format": tru')
    with caplog.at_level("WARNING", logger="trainer.checkpoint.resume"):
        _, meta = find_resume_checkpoint(Run(run), tmp_path / "out")
    assert meta["global_step"] == 10 and "falling back" in caplog.text


def test_every_checkpoint_corrupted_starts_fresh_loudly(tmp_path, caplog):
    run = str(tmp_path / "run")
    commit(run, tmp_path, 10)
    open_store(run).put_bytes(f"checkpoints/{step_folder(10)}/{SHARD.format(s=10)}", b"x" * 1024)
    with caplog.at_level("WARNING", logger="trainer.checkpoint.resume"):
        assert find_resume_checkpoint(Run(run), tmp_path / "out") is None
    assert "starting fresh" in caplog.text


def test_stale_local_folder_of_a_killed_run_is_replaced(tmp_path):
    """The killed run's own checkpoint-20 (never committed, maybe torn) must not be trusted."""
    run = str(tmp_path / "run")
    data = commit(run, tmp_path, 20)
    torn = tmp_path / "out" / "checkpoint-20" / SHARD.format(s=20)
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"torn write")
    path, _ = find_resume_checkpoint(Run(run), tmp_path / "out")
    assert (path / SHARD.format(s=20)).read_bytes() == data


def test_verified_local_copy_is_reused_without_download(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    commit(run, tmp_path, 20)
    find_resume_checkpoint(Run(run), tmp_path / "out")
    import trainer.checkpoint.resume

    def no_download(*a, **kw):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(trainer.checkpoint.resume, "download_verified", no_download)
    path, meta = find_resume_checkpoint(Run(run), tmp_path / "out")
    assert meta["global_step"] == 20 and path.name == "checkpoint-20"


def test_max_step_limits_the_choice(tmp_path):
    run = str(tmp_path / "run")
    for s in (10, 20, 30):
        commit(run, tmp_path, s)
    _, meta = find_resume_checkpoint(Run(run), tmp_path / "out", max_step=25)
    assert meta["global_step"] == 20


def test_agree_in_a_one_process_gloo_group(tmp_path, monkeypatch):
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    run = str(tmp_path / "run")
    commit(run, tmp_path, 10)
    commit(run, tmp_path, 20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    try:
        path, meta = agree_resume_checkpoint(Run(run), tmp_path / "out", local_rank=0)
    finally:
        dist.destroy_process_group()
    assert meta["global_step"] == 20 and path.name == "checkpoint-20"


def _agree_rank(rank: int, port: int, run: str, root: str, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch.distributed as dist

    import trainer.checkpoint.resume as resume
    from artifacts.errors import VerificationError

    if rank == 1:  # this "node" cannot verify the newest checkpoint (say, a bad download)
        real = resume.download_verified

        def flaky(src, dest, **kw):
            if src.endswith(step_folder(20)):
                raise VerificationError("zero_pp_rank_0: sha256 mismatch (simulated)")
            return real(src, dest, **kw)

        resume.download_verified = flaky
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    try:
        path, meta = resume.agree_resume_checkpoint(
            Run(run), Path(root) / f"node{rank}", local_rank=0
        )
        out[rank] = (path.name, meta["global_step"])
        # Both ranks leave together: a rank tearing gloo down while the other still reads its
        # socket made the other fail with "connection reset" (seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_nodes_agree_on_the_newest_checkpoint_every_node_verified(tmp_path):
    """Node 1 fails to verify step 20: both nodes must resume from step 10, not one from each."""
    import socket

    import torch.multiprocessing as mp

    run = str(tmp_path / "run")
    commit(run, tmp_path, 10)
    commit(run, tmp_path, 20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mgr = mp.get_context("spawn").Manager()
    out = mgr.dict()
    mp.spawn(_agree_rank, args=(port, run, str(tmp_path / "scratch"), out), nprocs=2, join=True)
    res = dict(out)
    mgr.shutdown()
    assert res == {0: ("checkpoint-10", 10), 1: ("checkpoint-10", 10)}


def test_saves_after_the_resume_step_are_dropped_so_rotation_keeps_the_new_save(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints

    from trainer.checkpoint.resume import drop_saves_after

    def killed_attempt(out: Path) -> None:  # committed 4; saved 6, 8 and 10 before kill -9
        for n in (4, 6, 8, 10):
            (out / f"checkpoint-{n}").mkdir(parents=True)

    control, out = tmp_path / "control", tmp_path / "output"
    killed_attempt(control)
    (control / "checkpoint-6" / "new-save").touch()  # the resumed run saves step 6 again
    rotate_checkpoints(str(control), save_total_limit=2)
    assert not (control / "checkpoint-6").exists()  # the stock rotation deletes the new save

    killed_attempt(out)
    assert drop_saves_after(out, 4) == ["checkpoint-6", "checkpoint-8", "checkpoint-10"]
    (out / "checkpoint-6").mkdir()
    rotate_checkpoints(str(out), save_total_limit=2)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert drop_saves_after(out, -1) == ["checkpoint-4", "checkpoint-6"]  # a fresh start
    assert drop_saves_after(tmp_path / "missing", 3) == []
