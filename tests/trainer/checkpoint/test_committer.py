"""Background checkpoint commit: non-blocking submit, multi-node commit, keep-last-K, HF glue."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from artifacts.manifest import MANIFEST_NAME, Manifest
from artifacts.run import Run, step_folder, step_of
from artifacts.store import open_store
from trainer.checkpoint.committer import CheckpointCommitError, CheckpointCommitter
from trainer.checkpoint.resume import committed_steps


@pytest.fixture(params=["local", "moto", "moto_server"])
def run_uri(request, tmp_path, monkeypatch):
    """A run prefix on a local folder, in-process moto, and moto's server on 127.0.0.1."""
    if request.param == "local":
        yield str(tmp_path / "store" / "run")
        return
    import boto3

    bucket = f"ckpt-{uuid.uuid4().hex[:10]}"
    if request.param == "moto":
        from moto import mock_aws

        monkeypatch.setenv("TWOSTAGE_UPLOAD_PROCESS", "0")  # the mock lives in this process only
        with mock_aws():
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield f"s3://{bucket}/runs/r1"
        return
    monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("moto_server"))
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/runs/r1"


def make_checkpoint(root: Path, step: int, ranks=(0, 1), *, with_global=True, size=2048) -> Path:
    """A folder shaped like an HF + DeepSpeed ZeRO-3 checkpoint written by ``ranks``."""
    d = root / f"checkpoint-{step}"
    (d / f"global_step{step}").mkdir(parents=True, exist_ok=True)
    for r in ranks:
        (d / f"global_step{step}" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(
            os.urandom(size)
        )
        (d / f"rng_state_{r}.pth").write_bytes(os.urandom(64))
    if with_global:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (d / "latest").write_text(f"global_step{step}")
    return d


def manifest_of(run_uri: str, step: int) -> Manifest:
    store = open_store(run_uri).child(f"checkpoints/{step_folder(step)}")
    return Manifest.from_json(store.get_bytes(MANIFEST_NAME))


def test_step_folder_names_sort_and_parse():
    assert step_folder(40) == "step-0000000040"
    assert step_of("runs/x/checkpoints/step-0000000040/") == 40
    assert step_of("checkpoint-40") is None
    assert sorted([step_folder(100), step_folder(9)]) == [step_folder(9), step_folder(100)]


def test_commit_layout_and_metadata(run_uri, tmp_path):
    d = make_checkpoint(tmp_path / "out", 40)
    with CheckpointCommitter(Run(run_uri), node_rank=0, num_nodes=1, keep_last=2) as c:
        c.submit(d, 40, {"epoch": 1.0, "config_hash": "abc"})
        c.wait()
    m = manifest_of(run_uri, 40)
    paths = {f.path for f in m.files}
    # relative paths of the HF folder are preserved, including the ZeRO shard sub-folder
    assert "global_step40/zero_pp_rank_1_mp_rank_00_optim_states.pt" in paths
    assert "trainer_state.json" in paths and not any(p.startswith("_parts") for p in paths)
    assert m.metadata["global_step"] == 40 and m.metadata["config_hash"] == "abc"
    assert committed_steps(Run(run_uri)) == [40]
    assert 40 in c.durations
    # the hard-link staging copy is gone after the upload
    assert not any((tmp_path / "out" / ".commit-staging").iterdir())


class SlowStore:
    """Wraps publish_part so an upload blocks until the test releases it."""

    def __init__(self, monkeypatch):
        import trainer.checkpoint.commit as commit_mod  # where publish_part is looked up

        monkeypatch.setenv("TWOSTAGE_UPLOAD_PROCESS", "0")  # the patch below is in-process
        self.release = threading.Event()
        self.started = threading.Event()
        real = commit_mod.publish_part

        def slow(*a, **kw):
            self.started.set()
            assert self.release.wait(30)
            return real(*a, **kw)

        monkeypatch.setattr(commit_mod, "publish_part", slow)


def test_submit_does_not_wait_for_the_upload(tmp_path, monkeypatch):
    slow = SlowStore(monkeypatch)
    run = str(tmp_path / "run")
    d = make_checkpoint(tmp_path / "out", 10)
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=3)
    t0 = time.monotonic()
    c.submit(d, 10, {})
    assert time.monotonic() - t0 < 2.0
    assert slow.started.wait(10)  # the upload is in flight...
    assert committed_steps(Run(run)) == []  # ...and nothing is committed yet
    with pytest.raises(TimeoutError):
        c.wait(timeout=0.2)
    slow.release.set()
    c.wait(timeout=30)
    assert committed_steps(Run(run)) == [10]
    c.close()


def test_rotation_of_the_local_folder_during_upload_is_harmless(tmp_path, monkeypatch):
    """HF's save_total_limit deletes old checkpoint-* folders while they may still upload."""
    import shutil

    slow = SlowStore(monkeypatch)
    run = str(tmp_path / "run")
    d = make_checkpoint(tmp_path / "out", 10)
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=3)
    c.submit(d, 10, {})
    assert slow.started.wait(10)
    shutil.rmtree(d)
    slow.release.set()
    c.close()
    assert len(manifest_of(run, 10).files) == 6


@pytest.mark.parametrize("run_uri", ["local", "moto_server"], indirect=True)
def test_manifest_only_after_every_node_part(run_uri, tmp_path):
    """Two nodes: node 1's shards missing → not committed; they arrive → committed with both."""
    head_dir = make_checkpoint(tmp_path / "node0", 20, ranks=(0, 1))
    other_dir = make_checkpoint(tmp_path / "node1", 20, ranks=(2, 3), with_global=False)
    head = CheckpointCommitter(Run(run_uri), node_rank=0, num_nodes=2, keep_last=2, part_timeout=60)
    head.submit(head_dir, 20, {})
    store = open_store(run_uri).child(f"checkpoints/{step_folder(20)}")
    deadline = time.monotonic() + 30
    while not store.exists("_parts/node-0.json"):  # head's own part is up...
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not store.exists(MANIFEST_NAME)  # ...but without node 1 there is no commit
    assert committed_steps(Run(run_uri)) == []
    other = CheckpointCommitter(Run(run_uri), node_rank=1, num_nodes=2, keep_last=2)
    other.submit(other_dir, 20, {})
    other.close()
    head.close()
    paths = {f.path for f in manifest_of(run_uri, 20).files}
    assert "global_step20/zero_pp_rank_3_mp_rank_00_optim_states.pt" in paths  # node 1's shard
    assert "global_step20/zero_pp_rank_0_mp_rank_00_optim_states.pt" in paths  # node 0's shard
    assert not store.exists("_parts/node-1.json")  # part records cleaned after the commit


def test_missing_node_times_out_and_is_raised(tmp_path):
    run = str(tmp_path / "run")
    head = CheckpointCommitter(Run(run), node_rank=0, num_nodes=2, keep_last=2, part_timeout=0.5)
    head.submit(make_checkpoint(tmp_path / "out", 5), 5, {})
    with pytest.raises(CheckpointCommitError, match="node-1"):
        head.wait(timeout=30)
    assert committed_steps(Run(run)) == []
    # and training does not silently go on without checkpoints: the next submit raises too
    with pytest.raises(CheckpointCommitError):
        head.submit(make_checkpoint(tmp_path / "out", 6), 6, {})


@pytest.mark.parametrize("run_uri", ["local", "moto"], indirect=True)
def test_keep_last_k(run_uri, tmp_path):
    with CheckpointCommitter(Run(run_uri), node_rank=0, num_nodes=1, keep_last=2) as c:
        for step in (10, 20, 30, 40):
            c.submit(make_checkpoint(tmp_path / "out", step, size=64), step, {})
            c.wait()  # one at a time: a queued one could be superseded (tested below)
    assert committed_steps(Run(run_uri)) == [30, 40]
    listing = open_store(run_uri).list("checkpoints")
    assert not any(step_folder(10) in o.key for o in listing)  # files gone, not only the manifest


class FailingDelete:
    """The store's removal of one pruned folder fails ``times`` times (an injected S3 error)."""

    def __init__(self, folder: str, times: int) -> None:
        from artifacts.store import LocalStore

        self.real = LocalStore.delete_prefix
        self.folder, self.left = folder, times

    def __call__(self, store, prefix: str, *a, **k):
        from artifacts.errors import ArtifactError

        if prefix.rstrip("/").endswith(self.folder) and self.left > 0:
            self.left -= 1
            raise ArtifactError(f"{store.uri}/{prefix}: delete failed: 503 Slow Down")
        return self.real(store, prefix, *a, **k)


def leftover_files(run: str, step: int) -> list[str]:
    return [o.key for o in open_store(run).list(f"checkpoints/{step_folder(step)}")]


@pytest.mark.parametrize("later_commit", [True, False])
def test_a_half_deleted_old_checkpoint_is_removed_by_a_retry(tmp_path, monkeypatch, later_commit):
    """Measured: after an outage the store kept checkpoints/step-40/ files without a manifest
    (the prune's delete failed); nothing removed it until an hour-old cleanup. The known-stale
    folder is retried at the next commit, and when the committer closes."""
    from artifacts.store import LocalStore

    run = str(tmp_path / "run")
    fault = FailingDelete(step_folder(40), times=1)
    monkeypatch.setattr(LocalStore, "delete_prefix", lambda self, prefix: fault(self, prefix))
    steps = (40, 50, 60, 70) if later_commit else (40, 50)
    with CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=1) as c:
        for step in steps:
            c.submit(make_checkpoint(tmp_path / "out", step, size=64), step, {})
            c.wait()  # each commit goes through (the prune's failure is not the commit's)
            if step == 50:
                assert fault.left == 0 and leftover_files(run, 40)  # the injected failure hit
                assert not open_store(run).exists(f"checkpoints/{step_folder(40)}/{MANIFEST_NAME}")
        if later_commit:
            assert leftover_files(run, 40) == []  # retried by the next commit, not in an hour
    assert leftover_files(run, 40) == []
    assert committed_steps(Run(run)) == [steps[-1]]


def test_stale_incomplete_folder_of_a_killed_run_is_removed(tmp_path):
    """A half-upload (no manifest) from before this launch must not linger or be reused."""
    run = str(tmp_path / "run")
    stale = open_store(run).child(f"checkpoints/{step_folder(30)}")
    stale.put_bytes("global_step30/zero_pp_rank_9_mp_rank_00_optim_states.pt", b"old")
    stale.put_bytes("_parts/node-1.json", b"[]")
    old = time.time() - 60
    for p in (tmp_path / "run").rglob("*"):
        os.utime(p, (old, old))
    with CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=2) as c:
        c.submit(make_checkpoint(tmp_path / "out", 30), 30, {})
    paths = {f.path for f in manifest_of(run, 30).files}
    assert "global_step30/zero_pp_rank_9_mp_rank_00_optim_states.pt" not in paths
    assert not stale.exists("global_step30/zero_pp_rank_9_mp_rank_00_optim_states.pt")


def test_already_committed_step_is_not_rewritten(tmp_path):
    run = str(tmp_path / "run")
    with CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=2) as c:
        c.submit(make_checkpoint(tmp_path / "a", 50), 50, {"tag": "first"})
    with CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=2) as c:
        c.submit(make_checkpoint(tmp_path / "b", 50), 50, {"tag": "second"})
    assert manifest_of(run, 50).metadata["tag"] == "first"


def test_commit_callback_submits_on_local_rank_zero_only(tmp_path):
    pytest.importorskip("transformers")
    from trainer.loop.callbacks import CommitCallback

    calls = []
    fake = SimpleNamespace(submit=lambda d, s, m: calls.append((d, s, m)), wait=lambda: None)
    cb = CommitCallback(fake, metadata=lambda state: {"convergence": {"stalls": 2}})
    state = SimpleNamespace(
        global_step=40,
        epoch=2.0,
        best_metric=None,
        log_history=[{"loss": 3.0, "step": 10}, {"eval_loss": 2.5, "epoch": 1.0, "step": 20}],
    )
    control = SimpleNamespace(should_save=False)
    args = SimpleNamespace(output_dir=str(tmp_path), local_process_index=0)
    cb.on_save(args, state, control)
    (d, step, meta) = calls[0]
    assert d == tmp_path / "checkpoint-40" and step == 40
    assert meta["val_losses"] == [{"step": 20, "epoch": 1.0, "eval_loss": 2.5}]
    assert meta["convergence"] == {"stalls": 2} and meta["epoch"] == 2.0
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path), local_process_index=1), state, control)
    assert len(calls) == 1


def test_single_node_skips_a_queued_checkpoint_superseded_by_a_newer_one(tmp_path, monkeypatch):
    """Saves outpace uploads: only the newest queued one is uploaded (short notice → commit)."""
    slow = SlowStore(monkeypatch)
    run = str(tmp_path / "run")
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=5)
    c.submit(make_checkpoint(tmp_path / "out", 10, size=64), 10, {})
    assert slow.started.wait(10)  # 10 is uploading
    c.submit(make_checkpoint(tmp_path / "out", 20, size=64), 20, {})  # queued...
    c.submit(make_checkpoint(tmp_path / "out", 30, size=64), 30, {})  # ...and superseded by 30
    slow.release.set()
    c.close()
    assert committed_steps(Run(run)) == [10, 30]


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is Linux-only")
def test_in_process_uploads_run_at_low_cpu_priority(tmp_path, monkeypatch):
    """Training ranks must win the CPU over a background upload (step time while uploading)."""
    import trainer.checkpoint.commit as commit_mod  # where publish_part is looked up

    seen = []
    uploaded = threading.Event()
    real = commit_mod.publish_part

    def spy(*a, **kw):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        try:
            return real(*a, **kw)
        finally:
            uploaded.set()

    monkeypatch.setattr(commit_mod, "publish_part", spy)
    monkeypatch.setenv("TWOSTAGE_UPLOAD_PROCESS", "0")
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    c = CheckpointCommitter(Run(str(tmp_path / "run")), node_rank=0, num_nodes=1, keep_last=1)
    c.submit(make_checkpoint(tmp_path / "out", 1, size=64), 1, {})
    assert uploaded.wait(60)
    c.close()
    assert seen and seen[0] >= min(19, main_before + 10)
    assert (
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
    )  # training untouched


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="process niceness is POSIX-only")
def test_uploads_run_in_a_separate_low_priority_process(tmp_path):
    """The default: bytes move in a spawned uploader (no GIL contention with the training loop)."""
    import signal

    run = str(tmp_path / "run")
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=1)
    assert c.upload_process
    c.submit(make_checkpoint(tmp_path / "out", 1, size=64), 1, {})
    deadline = time.monotonic() + 60
    while not c._pool.pids():  # spawned by the committer thread
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = c._pool.pids()
    assert os.getpid() not in pids
    # while training runs: niceness 19 (set by the worker's initializer, right after it starts)
    while not all(os.getpriority(os.PRIO_PROCESS, pid) == 19 for pid in pids):
        assert time.monotonic() < deadline, [os.getpriority(os.PRIO_PROCESS, p) for p in pids]
        time.sleep(0.02)
    c.wait(timeout=120)
    if os.geteuid() == 0:  # waiting = training stopped: uploads back to normal priority
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [base] * len(pids)
    # the launcher SIGTERMs the whole process tree on a spot notice: the uploader must survive it
    os.kill(pids[0], signal.SIGTERM)
    c.submit(make_checkpoint(tmp_path / "out", 2, size=64), 2, {})
    c.close()
    assert committed_steps(Run(run)) == [2]


# -- parallel rank uploaders -------------------------------------------------------------------


def test_upload_plan_gives_each_rank_its_own_uploader():
    from trainer.checkpoint.uploaders import assign_uploads, bytes_per_rank, owner_rank

    sizes = {
        "global_step8/zero_pp_rank_0_mp_rank_00_optim_states.pt": 900,
        "global_step8/zero_pp_rank_1_mp_rank_00_optim_states.pt": 900,
        "global_step8/zero_pp_rank_0_mp_rank_00_model_states.pt": 50,
        "global_step8/zero_pp_rank_1_mp_rank_00_model_states.pt": 50,
        "rng_state_0.pth": 10,
        "rng_state_1.pth": 10,
        "trainer_state.json": 30,
        "config.json": 5,
    }
    assert owner_rank("global_step8/bf16_zero_pp_rank_7_mp_rank_00_optim_states.pt") == 7
    assert owner_rank("trainer_state.json") is None
    groups = assign_uploads(sizes, 2)
    assert len(groups) == 2 and sorted(sum(groups, [])) == sorted(sizes)
    assert all("rank_0" in p or "state_0" in p for p in groups[0] if owner_rank(p) is not None)
    assert all("rank_1" in p or "state_1" in p for p in groups[1] if owner_rank(p) is not None)
    assert len(assign_uploads(sizes, 1)) == 1
    # 8 uploaders, 2 ranks: the shared files go to idle uploaders; no empty groups
    assert sorted(map(len, assign_uploads(sizes, 8))) == [1, 1, 3, 3]
    entries = [{"path": p, "size": n} for p, n in sizes.items()]
    assert bytes_per_rank(entries) == {"rank-0": 960, "rank-1": 960, "shared": 35}


def test_every_rank_uploads_in_its_own_process_and_one_part_lists_all(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=1, uploaders=2)
    c.submit(make_checkpoint(tmp_path / "out", 4, ranks=(0, 1), size=4096), 4, {})
    c.close()
    m = manifest_of(run, 4)
    paths = {f.path for f in m.files}
    assert {f"global_step4/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= paths
    assert c.uploads[4]["bytes"] == m.total_bytes and c.throughput_bps > 0


def test_an_uploader_killed_mid_upload_means_no_part_and_no_manifest(tmp_path):
    """SIGKILL one of the two rank uploaders while its shard streams: nothing is committed."""
    import signal

    run = str(tmp_path / "run")
    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=1, uploaders=2)
    d = make_checkpoint(tmp_path / "out", 6, ranks=(0, 1), size=1024)
    big = d / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with open(big, "wb") as f:  # 1.5 GB sparse file: its copy + hash takes seconds
        f.truncate(1536 * 1024 * 1024)
    c.submit(d, 6, {})
    dest = tmp_path / "run" / Run(run).checkpoint(6) / "global_step6"
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:  # the shard's temporary file appears once its upload is under way
        assert time.monotonic() < deadline, "the upload never started"
        if dest.is_dir() and any(p.name.startswith(".zero_pp_rank_1") for p in dest.iterdir()):
            victim = _process_reading(c, "zero_pp_rank_1")
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(CheckpointCommitError, match="died mid-upload"):
        c.wait(timeout=120)
    folder = open_store(run).child(Run(run).checkpoint(6))
    assert not folder.exists(MANIFEST_NAME)
    assert not folder.exists("_parts/node-0.json")
    assert committed_steps(Run(run)) == []
    with pytest.raises(CheckpointCommitError):  # training does not go on without checkpoints
        c.submit(make_checkpoint(tmp_path / "out", 7), 7, {})


def _process_reading(c: CheckpointCommitter, name: str) -> int | None:
    """The upload process that has a file named like ``name`` open, if any."""
    for pid in c._pool.pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(name in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds):
                return pid
        except OSError:
            continue
    return None
