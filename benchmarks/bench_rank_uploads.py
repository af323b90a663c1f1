"""Checkpoint upload throughput with 1 vs 2 vs 4 parallel rank uploaders, and local save throughput.

Shard files of realistic size (``--ranks`` × ``--shard-mb`` of random bytes, shaped like a ZeRO-3
checkpoint folder, under ``/tmp``, deleted at the end) are committed through the real
``CheckpointCommitter`` to moto's S3 server on 127.0.0.1 (its own process at niceness 19,
standing in for S3). For each uploader count the committer is warmed up first (its upload
processes spawned by a tiny checkpoint, as the first periodic save does in a run), then the big
checkpoint is submitted and waited for (``wait()`` = training stopped: full priority, the
spot-notice path). Rounds go 1, 2, 4, 4, 2, 1, ... so drift on a shared box hits every count
alike; medians and ratios against 1 uploader in the same run are reported.

Save throughput: ``torch.save`` of an fp32 tensor of ``--shard-mb`` (what DeepSpeed does for a
shard), to the page cache and with ``fsync``.

    python benchmarks/bench_rank_uploads.py [--ranks 4 --shard-mb 256 --rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
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


def make_checkpoint(root: Path, step: int, ranks: int, shard_mb: int) -> tuple[Path, int]:
    """A ZeRO-3-shaped folder: per rank an optimizer shard of ``shard_mb`` and small files."""
    d = root / f"checkpoint-{step}"
    g = d / f"global_step{step}"
    g.mkdir(parents=True)
    total = 0
    chunk = os.urandom(4 * MB)  # random, so nothing compresses; reused to generate fast
    for r in range(ranks):
        with open(g / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", "wb") as f:
            for i in range(shard_mb // 4):
                f.write(chunk[i % 7 :] + chunk[: i % 7])  # not one repeated block
        (g / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(os.urandom(64 * 1024))
        (d / f"rng_state_{r}.pth").write_bytes(os.urandom(16 * 1024))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (d / "config.json").write_text("{}")
    for p in d.rglob("*"):
        if p.is_file():
            total += p.stat().st_size
    return d, total


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hash_rate() -> dict:
    """SHA-256 (hashlib, 1 MiB updates) over 256 MiB in CPU seconds: the per-core hashing ceiling."""
    import hashlib

    buf = os.urandom(MB)
    h = hashlib.sha256()
    started = time.process_time()
    for _ in range(256):
        h.update(buf)
    cpu = time.process_time() - started
    return {
        "cpu_s_per_gb": round(cpu / (256 * MB / 1e9), 3),
        "gb_per_cpu_s": round(256 * MB / 1e9 / cpu, 2),
    }


def upload_round(run: str, ckpt: Path, warm: Path, uploaders: int, step: int) -> dict:
    from artifacts.run import Run
    from trainer.checkpoint.committer import CheckpointCommitter

    c = CheckpointCommitter(Run(run), node_rank=0, num_nodes=1, keep_last=1, uploaders=uploaders)
    try:
        c.submit(warm, step, {})  # spawns the upload processes, as the first periodic save does
        c.wait()
        pids = c._pool.pids()
        cpu_before = sum(_cpu_seconds(pid) for pid in pids)
        started = time.monotonic()
        c.submit(ckpt, step + 1, {})
        c.wait()
        wall = time.monotonic() - started
        cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
    finally:
        c.close()
    up = c.uploads[step + 1]
    return {
        "uploader_cpu_s": round(cpu, 2),
        "uploader_cpu_s_per_gb": round(cpu / (up["bytes"] / 1e9), 2),
        "uploaders": uploaders,
        "bytes": up["bytes"],
        "upload_s": up["upload_s"],
        "submit_to_commit_s": round(wall, 3),
        "gbps": round(up["bytes"] / up["upload_s"] / 1e9, 3),
    }


def save_throughput(tmp: Path, shard_mb: int, repeats: int = 3) -> dict:
    """Median of ``repeats`` ``torch.save`` calls of one shard-sized fp32 tensor (+ fsync)."""
    import torch

    t = torch.randn(shard_mb * MB // 4)
    out = {}
    for sync in (False, True):
        times = []
        for i in range(repeats):
            path = tmp / f"save-{sync}-{i}.pt"
            started = time.monotonic()
            torch.save({"fp32": t}, path)
            if sync:
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            times.append(time.monotonic() - started)
            size = path.stat().st_size
            path.unlink()
        seconds = statistics.median(times)
        key = "fsync" if sync else "page_cache"
        out[key] = {
            "seconds": [round(x, 3) for x in times],
            "gbps": round(size / seconds / 1e9, 3),
            "s_per_gb": round(seconds / (size / 1e9), 2),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--shard-mb", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2, help="each round runs 1, 2, 4 and 4, 2, 1")
    p.add_argument("--counts", default="1,2,4")
    p.add_argument(
        "--store",
        choices=["moto", "local"],
        default="moto",
        help="moto's S3 server on 127.0.0.1, or a folder under /tmp (client-side cost only: copy + hash)",
    )
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    counts = [int(x) for x in a.counts.split(",")]

    import boto3
    from moto_s3 import start_moto_s3

    tmp = Path(tempfile.mkdtemp(prefix="bench-rank-uploads-", dir="/tmp"))
    server = start_moto_s3() if a.store == "moto" else None
    results: list[dict] = []
    try:
        bucket = f"ranks-{uuid.uuid4().hex[:8]}"
        if server is not None:
            boto3.client("s3").create_bucket(Bucket=bucket)
        ckpt, total = make_checkpoint(tmp / "src", 100, a.ranks, a.shard_mb)
        warm, _ = make_checkpoint(tmp / "warm", 1, a.ranks, 4)
        print(f"checkpoint: {a.ranks} ranks x {a.shard_mb} MB = {total / 1e9:.2f} GB", flush=True)
        save = save_throughput(tmp, a.shard_mb)
        save["sha256"] = hash_rate()
        print(f"save: {save}", flush=True)
        order = []
        for _ in range(a.rounds):
            order += counts + counts[::-1]
        for i, n in enumerate(order):
            run = f"s3://{bucket}/runs/r{i}" if server is not None else str(tmp / "store" / f"r{i}")
            res = upload_round(run, ckpt, warm, n, 10 * i + 1)
            results.append(res)
            print(json.dumps(res), flush=True)
            if server is None:
                shutil.rmtree(run, ignore_errors=True)
                continue
            s3 = boto3.client("s3")
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"runs/r{i}/"
            ):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for n in counts:
        rows = [r for r in results if r["uploaders"] == n]
        summary[n] = {
            "median_gbps": statistics.median(r["gbps"] for r in rows),
            "median_upload_s": statistics.median(r["upload_s"] for r in rows),
            "median_uploader_cpu_s_per_gb": statistics.median(
                r["uploader_cpu_s_per_gb"] for r in rows
            ),
            "runs": [r["gbps"] for r in rows],
        }
    base = summary[counts[0]]["median_gbps"]
    for n in counts:
        summary[n]["ratio_vs_1"] = round(summary[n]["median_gbps"] / base, 3)
    doc = {
        "store": a.store,
        "ranks": a.ranks,
        "shard_mb": a.shard_mb,
        "bytes": total,
        "save": save,
        "summary": summary,
        "rounds": results,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps({"summary": summary, "save": save, "loadavg": doc["loadavg"]}, indent=2))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
