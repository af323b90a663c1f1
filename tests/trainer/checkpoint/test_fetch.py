"""Resume before the collective: each node downloads only its own ranks' share (counted through moto)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from artifacts.publish import publish_dir
from artifacts.run import Run, step_folder
from trainer.checkpoint.fetch import fetch_share, node_ranks, rank_of
from trainer.checkpoint.prefetch import prefetch_resume

WORLD = 4  # 2 nodes × 2 ranks
OPTIM = "global_step{s}/zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
MODEL = "global_step{s}/zero_pp_rank_{r}_mp_rank_00_model_states.pt"


def save(root: Path, step: int, world: int = WORLD) -> Path:
    """An HF + ZeRO-3 shaped checkpoint folder: per-rank optimizer/model states and RNG."""
    src = root / f"checkpoint-{step}"
    for r in range(world):
        for name, size in ((OPTIM, 12_000), (MODEL, 300)):
            p = src / name.format(s=step, r=r)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(size))
        (src / f"rng_state_{r}.pth").write_bytes(os.urandom(100))
    (src / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (src / "scheduler.pt").write_bytes(os.urandom(500))
    (src / "latest").write_text(f"global_step{step}")
    return src


def commit(run: Run, src: Path, step: int, world: int = WORLD) -> None:
    publish_dir(src, f"{run.checkpoints_uri}/{step_folder(step)}",
                metadata={"global_step": step, "world_size": world})  # fmt: skip


def test_rank_files_are_recognised():
    assert rank_of(OPTIM.format(s=1, r=3)) == 3
    assert rank_of("global_step1/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert rank_of(MODEL.format(s=1, r=0)) == 0 and rank_of("rng_state_7.pth") == 7
    assert rank_of("trainer_state.json") is None and rank_of("global_step1/latest") is None
    assert node_ranks(1, 2, 4) == {2, 3} and node_ranks(0, 1, 8) == set(range(8))


def test_same_world_size_downloads_only_this_nodes_ranks(s3_run, tmp_path):
    run, got = s3_run
    src = save(tmp_path / "saved", 10)
    commit(run, src, 10)

    dest, meta, report = fetch_share(run, tmp_path / "node1", world=WORLD, ranks={2, 3})

    own = {k for k in got if rank_of(k) is not None}
    assert {rank_of(k) for k in own} == {2, 3}  # never rank 0's or 1's shards
    assert sum(got.values()) == report.downloaded_bytes == report.share_bytes  # 1.0× its share
    assert report.share_bytes < 0.55 * report.total_bytes
    assert meta["global_step"] == 10 and dest == tmp_path / "node1" / "checkpoint-10"
    for r in (2, 3):
        assert (dest / OPTIM.format(s=10, r=r)).read_bytes() == (
            src / OPTIM.format(s=10, r=r)
        ).read_bytes()
    assert not (dest / OPTIM.format(s=10, r=0)).exists()
    assert (dest / "trainer_state.json").exists() and (dest / "MANIFEST.json").exists()


def test_a_survivor_holding_the_step_downloads_nothing(s3_run, tmp_path):
    run, got = s3_run
    output = tmp_path / "scratch" / "output"
    src = save(output, 20)  # the survivor's own save of the committed step
    commit(run, src, 20)

    dest, _, report = fetch_share(run, tmp_path / "scratch" / "resume", world=WORLD, ranks={0, 1},
                                  local_dirs=(output,))  # fmt: skip

    assert got == {} and report.downloaded_bytes == 0
    assert report.reused_bytes == report.share_bytes
    assert (dest / OPTIM.format(s=20, r=1)).read_bytes() == (src / OPTIM.format(s=20, r=1)).read_bytes()

    # A local file that no longer matches the manifest is fetched again, and only that one.
    bad = src / OPTIM.format(s=20, r=1)
    bad.write_bytes(b"\0" + bad.read_bytes()[1:])
    (dest / OPTIM.format(s=20, r=1)).unlink()
    _, _, report = fetch_share(run, tmp_path / "scratch" / "resume", world=WORLD, ranks={0, 1},
                               local_dirs=(output,))  # fmt: skip
    assert list(got) == [OPTIM.format(s=20, r=1)] and report.downloaded_bytes == 12_000


def test_another_world_size_fetches_every_file_for_the_conversion(s3_run, tmp_path):
    run, got = s3_run
    commit(run, save(tmp_path / "saved", 30), 30)
    _, _, report = fetch_share(run, tmp_path / "n", world=2, ranks={0, 1})
    assert report.ranks is None and report.downloaded_bytes == report.total_bytes
    assert {rank_of(k) for k in got if rank_of(k) is not None} == {0, 1, 2, 3}


def test_other_local_ranks_wait_for_local_rank_0_without_a_collective(tmp_path):
    run = Run(str(tmp_path / "store" / "run"))
    commit(run, save(tmp_path / "saved", 40), 40)
    scratch = tmp_path / "scratch"
    out: dict[int, dict] = {}
    waiter = threading.Thread(target=lambda: out.__setitem__(1, prefetch_resume(
        run, scratch, world=WORLD, node_rank=1, num_nodes=2, local_rank=1, timeout_s=60)))  # fmt: skip
    waiter.start()
    out[0] = prefetch_resume(run, scratch, world=WORLD, node_rank=1, num_nodes=2, local_rank=0)
    waiter.join(60)
    assert out[0] == out[1] and out[0]["step"] == 40
    assert out[0]["report"]["ranks"] == [2, 3]


def test_nothing_committed_means_start_fresh(tmp_path):
    run = Run(str(tmp_path / "store" / "run"))
    doc = prefetch_resume(run, tmp_path / "s", world=2, node_rank=0, num_nodes=1, local_rank=0)
    assert doc == {"step": -1}


def test_at_another_world_size_a_non_head_node_fetches_shared_files_and_the_heads_universal_form(
    tmp_path, monkeypatch
):
    """Before the collective: node 1 of a resized run downloads only the shared files of the
    original, waits (its own bound) for the head's committed universal form, then fetches it."""
    from artifacts.run import Run as _Run
    from trainer.checkpoint.elastic import universal_uri

    run = _Run(str(tmp_path / "store" / "run"))
    commit(run, save(tmp_path / "saved", 50), 50)  # written by 4 ranks; resumed on 2 nodes × 1
    universal = tmp_path / "converted"
    (universal / "global_step50_universal").mkdir(parents=True)
    (universal / "global_step50_universal" / "mp_rank_00_model_states.pt").write_bytes(b"u")
    (universal / "latest_universal").write_text("global_step50_universal")
    scratch = tmp_path / "node1"
    waited: list[float] = []

    def head_commits_later(seconds: float) -> None:  # the head converts meanwhile
        waited.append(seconds)
        if len(waited) == 2:
            publish_dir(universal, universal_uri(run, 50), metadata={"global_step": 50})

    import trainer.checkpoint.elastic as elastic
    import trainer.checkpoint.prefetch as fetch

    real = elastic.universal_before_collective
    monkeypatch.setattr(fetch, "universal_before_collective",
                        lambda *a, **kw: real(*a, **kw, sleep=head_commits_later, poll_s=5.0))
    doc = prefetch_resume(run, scratch, world=2, node_rank=1, num_nodes=2, local_rank=0)
    report = doc["report"]
    assert report["ranks"] == [] and report["downloaded_bytes"] < 2000  # no rank's shards
    assert waited == [5.0, 5.0]
    assert Path(report["universal"]).name == "checkpoint-50.universal"
    assert (Path(report["universal"]) / "latest_universal").exists()
