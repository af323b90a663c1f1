"""The checkpoint report in STATUS.json: bytes per rank, save/upload/commit times, interruptions."""

from __future__ import annotations

import time
from types import SimpleNamespace

from artifacts.run import Run, RunState
from trainer.checkpoint.report import CheckpointReport
from trainer.status import StatusWriter


def test_status_carries_checkpoint_numbers_and_every_interruption(tmp_path):
    run = Run(str(tmp_path / "run"))
    committer = SimpleNamespace(
        uploads={8: {"bytes": 2_000_000, "upload_s": 0.5}},
        commits={
            8: {
                "bytes_per_rank": {"rank-0": 990_000, "rank-1": 990_000, "shared": 20_000},
                "total_bytes": 2_000_000,
                "submit_to_commit_s": 0.9,
                "committed_at": time.time() - 120,
                "committed_at_iso": "2026-12-01T23:00:00Z",
            }
        },
    )
    earlier = {"notice": "spot terminate at T", "step": 4, "notice_to_commit_s": 0.7}
    writer = StatusWriter(run, enabled=True, node_count=1)
    writer.write(RunState.INTERRUPTED, global_step=4, interruptions=[earlier])
    writer.close()  # status writes are in the background: the launch ends by flushing them

    # the next launch: carries the interruption over, adds its own numbers
    writer = StatusWriter(run, enabled=True, node_count=1)
    report = CheckpointReport(committer, previous=writer.previous.extra)
    writer.providers.append(report.status_fields)
    report.record_save(8, 0.25)
    report.add_interruption({"notice": "SIGTERM received", "step": 8, "notice_to_commit_s": 1.2})
    writer.write(RunState.INTERRUPTED, global_step=8)
    writer.close()

    status = run.read_status()
    ckpt = status.extra["checkpoints"]
    assert ckpt["last_commit"] == {"step": 8, "at": "2026-12-01T23:00:00Z"}
    assert ckpt["at_risk"] == "at risk since the last commit: 2 min"
    (entry,) = ckpt["recent"]
    assert entry["bytes_per_rank"] == {"rank-0": 990_000, "rank-1": 990_000, "shared": 20_000}
    assert entry["save_s"] == 0.25 and entry["upload_s"] == 0.5
    assert entry["submit_to_commit_s"] == 0.9 and entry["upload_gbps"] == 0.004
    assert [i["notice_to_commit_s"] for i in status.extra["interruptions"]] == [0.7, 1.2]
    assert report.summary()["interruptions"][-1]["notice"] == "SIGTERM received"
