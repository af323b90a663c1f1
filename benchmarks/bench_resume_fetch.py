"""Same-size resume: bytes each node downloads vs its own ranks' share, and download rates.

A ZeRO-3-shaped checkpoint (``--ranks`` ranks on ``--nodes`` nodes, ``--shard-mb`` of random
bytes per rank's optimizer shard plus small files) is committed to moto's S3 server on 127.0.0.1
(its own process at niceness 19, standing in for S3). Then, in one run, alternating rounds:

- ``whole``: the path before (``find_resume_checkpoint``: every file, one process);
- ``share, 1 worker`` and ``share, N workers``: ``trainer.checkpoint.fetch.fetch_share`` for
  node 1's ranks (one download thread, then ``--workers``);
- ``survivor``: ``fetch_share`` with the node's own save on disk (hash-checked, nothing fetched).

Reported: bytes downloaded / the node's share, seconds, MB/s; medians over ``--rounds``.
Physical limit here: loopback + moto in Python on 2 shared cores (moto is the bottleneck; a real
node reaches 0.15–0.2 GB/s per Python process to S3 and ≤ 100 Gbps per node).

    python benchmarks/bench_resume_fetch.py [--ranks 4 --nodes 2 --shard-mb 64 --rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MB = 1024 * 1024


def make_checkpoint(root: Path, step: int, ranks: int, shard_mb: int) -> Path:
    d = root / f"checkpoint-{step}"
    for r in range(ranks):
        p = d / f"global_step{step}" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(shard_mb * MB))
        (p.parent / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(os.urandom(4096))
        (d / f"rng_state_{r}.pth").write_bytes(os.urandom(1024))
    (d / "trainer_state.json").write_text("{}")
    return d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--shard-mb", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()

    import boto3
    from moto_s3 import start_moto_s3

    from artifacts.publish import publish_dir
    from artifacts.run import Run, step_folder
    from trainer.checkpoint.fetch import fetch_share, node_ranks
    from trainer.checkpoint.resume import find_resume_checkpoint

    server = start_moto_s3()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        run = Run(f"s3://{bucket}/runs/r")
        src = make_checkpoint(tmp / "saved", 10, a.ranks, a.shard_mb)
        publish_dir(src, f"{run.checkpoints_uri}/{step_folder(10)}",
                    metadata={"global_step": 10, "world_size": a.ranks})  # fmt: skip
        ranks = node_ranks(1, a.nodes, a.ranks)
        rows: dict[str, list[tuple[float, int, int]]] = {}

        def timed(name: str, fn) -> None:
            dest = tmp / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            t0 = time.perf_counter()
            moved, share = fn(dest)
            rows.setdefault(name, []).append((time.perf_counter() - t0, moved, share))

        def whole(dest):
            path, _ = find_resume_checkpoint(run, dest)
            n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            return n, n

        def share(workers, local=()):
            def go(dest):
                _, _, rep = fetch_share(run, dest, world=a.ranks, ranks=ranks,
                                        local_dirs=local, workers=workers)  # fmt: skip
                return rep.downloaded_bytes, rep.share_bytes
            return go

        for _ in range(a.rounds):
            timed("whole checkpoint, 1 process (before)", whole)
            timed("own share, 1 download thread", share(1))
            timed(f"own share, {a.workers} download threads", share(a.workers))
            timed("survivor holding the step", share(a.workers, (tmp / "saved",)))
        print("| path | downloaded / node's share | seconds (median) | MB/s |")
        print("|---|---|---|---|")
        for name, rs in rows.items():
            s = statistics.median(r[0] for r in rs)
            moved = rs[0][1]
            share_bytes = rows["own share, 1 download thread"][0][2]
            print(f"| {name} | {moved / share_bytes:.2f}× ({moved / MB:.0f} MB) | {s:.2f} | "
                  f"{moved / MB / s:.0f} |")  # fmt: skip
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
