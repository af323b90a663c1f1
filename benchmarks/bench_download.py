"""Verified download vs a plain boto3 download_file of the same artifact, from moto's server on loopback
(a separate process, like a real S3 endpoint).

Method: one 512 MB random file published as an artifact to moto's S3 server (127.0.0.1). Then,
alternating in the same process so both see the same machine state, N rounds of
  (a) baseline: ``boto3 client.download_file`` (the transfer manager, default concurrency, to a file),
  (b) ours: ``artifacts.download.download_verified`` (temp sibling, SHA-256 while streaming, size
      and hash checks, atomic rename).
Reports the median wall time of each and the ratio. Also hashes the file with hashlib vs
``sha256sum`` (one core's SHA-256 throughput is the physical limit of verification).

Run: python benchmarks/bench_download.py [--mb 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from moto_s3 import start_moto_s3

    server = start_moto_s3(nice=0)

    import boto3

    from artifacts.download import download_verified
    from artifacts.hashing import hash_file
    from artifacts.publish import publish_dir
    from artifacts.s3 import make_client, transfer_config

    work = Path(tempfile.mkdtemp(prefix="bench-dl-"))
    try:
        src = work / "src"
        src.mkdir()
        big = src / "model.safetensors"
        with open(big, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1024 * 1024))
        boto3.client("s3").create_bucket(Bucket="bench")
        t = time.perf_counter()
        publish_dir(src, "s3://bench/model")
        publish_s = time.perf_counter() - t

        client = make_client()
        base, ours = [], []
        for i in range(args.rounds):
            out = work / f"plain-{i}.bin"
            t = time.perf_counter()
            client.download_file(
                "bench", "model/model.safetensors", str(out), Config=transfer_config()
            )
            base.append(time.perf_counter() - t)
            out.unlink()
            dest = work / f"dl-{i}"
            t = time.perf_counter()
            download_verified("s3://bench/model", dest)
            ours.append(time.perf_counter() - t)
            shutil.rmtree(dest)

        t = time.perf_counter()
        hash_file(big)
        py_hash = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(["sha256sum", str(big)], check=True, capture_output=True)
        sum_hash = time.perf_counter() - t

        mb = args.mb * 1024 * 1024 / 1e6
        b, o = statistics.median(base), statistics.median(ours)
        print(f"artifact: {args.mb} MiB, {args.rounds} alternating rounds, moto server on loopback")
        print(f"publish (upload+hash+manifest): {publish_s:.2f}s  ({mb / publish_s:.0f} MB/s)")
        print(
            f"plain boto3 download_file  median {b:.2f}s  ({mb / b:.0f} MB/s)  runs {[round(x, 2) for x in base]}"
        )
        print(
            f"download_verified          median {o:.2f}s  ({mb / o:.0f} MB/s)  runs {[round(x, 2) for x in ours]}"
        )
        print(f"ratio verified/plain: {o / b:.3f}x (target <= 1.05x)")
        print(
            f"hashlib sha256: {mb / py_hash / 1000:.2f} GB/s   sha256sum: {mb / sum_hash / 1000:.2f} GB/s   ratio {sum_hash / py_hash:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
