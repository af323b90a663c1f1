"""Decrypt throughput of the twostage stream format vs `openssl speed`, same machine, same run.

Usage::

    python benchmarks/bench_decrypt.py [--size-mib 256] [--chunk-kib 64 256 1024] [--repeats 5]

For each chunk size it measures, single-threaded and pinned to one core:

* ``openssl``: ``openssl speed -decrypt -evp aes-256-gcm -bytes CHUNK -seconds 3`` (the baseline:
  OpenSSL's own loop over one buffer, no I/O, no authentication-failure path);
* ``stream-memory``: :func:`local.crypto.decrypt_fileobj` over the ciphertext held in memory
  (``io.BytesIO``): the full reader — header check, ``readinto`` a preallocated buffer,
  look-ahead for the last chunk, one ``AESGCM.decrypt`` per chunk;
* ``stream-file``: :func:`local.crypto.decrypt_stream` on the file, read from the page cache;
* ``aead-only``: ``AESGCM.decrypt`` over memoryview slices of the in-memory ciphertext
  (the ceiling of the Python binding: no reads, no stream logic).

Prints a Markdown table and writes it to ``benchmarks/out/decrypt.md``. The best of
``--repeats`` interleaved runs is reported for every speed, and the median of the per-repeat
ratios (other processes share this machine's cores; interleaving makes load hit both sides).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.backends.openssl.backend import backend  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from local import crypto  # noqa: E402

KEY = bytes(range(32))


def openssl_speed(chunk: int, seconds: int, cpu: int | None, elapsed: bool = False) -> float:
    """Bytes/s of `openssl speed -decrypt -evp aes-256-gcm` at ``chunk`` bytes per call."""
    cmd = ["openssl", "speed", "-decrypt", "-evp", "aes-256-gcm", "-bytes", str(chunk)]
    cmd += ["-seconds", str(seconds)] + (["-elapsed"] if elapsed else [])
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # Last line: "AES-256-GCM    3963688.13k" — thousands of bytes per second.
    match = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.MULTILINE)
    if not match:
        raise SystemExit(f"could not parse openssl speed output:\n{out}")
    return float(match.group(1)) * 1000


CLOCK = time.process_time


def throughput(fn, size: int, min_seconds: float = 0.5) -> float:
    """Bytes/s of ``fn`` (which processes ``size`` bytes), over passes lasting >= min_seconds.

    The clock is CPU time (user + system) of this single-threaded process by default: `openssl
    speed` divides by CPU user time too (unless given -elapsed), so both sides of the ratio are
    measured alike and neither counts time spent descheduled by other load. ``--elapsed``
    switches both sides to wall-clock time.
    """
    passes, start = 0, CLOCK()
    while True:
        fn()
        passes += 1
        spent = CLOCK() - start
        if spent >= min_seconds:
            return passes * size / spent


def drain(chunks) -> int:
    total = 0
    for piece in chunks:
        total += len(piece)
    return total


def bench(size: int, chunk: int, repeats: int, seconds: int, cpu: int | None, tmp: Path) -> dict:
    plain = os.urandom(size)
    blob = crypto.encrypt_bytes(plain, KEY, chunk_size=chunk)
    del plain
    path = tmp / f"bench-{chunk}.enc"
    path.write_bytes(blob)
    assert drain(crypto.decrypt_stream(path, KEY)) == size  # warms the page cache too

    payload_key, _ = crypto._derive(KEY, blob[21:53])
    aead = AESGCM(payload_key)
    view = memoryview(blob)
    enc = chunk + crypto.TAG_SIZE
    starts = range(crypto.HEADER_SIZE, len(blob), enc)
    last = len(starts) - 1

    def aead_only() -> None:
        for i, start in enumerate(starts):
            aead.decrypt(crypto.chunk_nonce(i, i == last), view[start : start + enc], None)

    rows = {
        "stream-memory": lambda: drain(crypto.decrypt_fileobj(io.BytesIO(blob), KEY)),
        "stream-file": lambda: drain(crypto.decrypt_stream(path, KEY)),
        "aead-only": aead_only,
    }
    # Interleave: each repeat runs openssl and then every variant, so a burst of load from other
    # processes hits both sides of a ratio alike. Report the best of each and the median ratio.
    speeds: dict[str, list[float]] = {name: [] for name in [*rows, "openssl"]}
    for _ in range(repeats):
        speeds["openssl"].append(openssl_speed(chunk, seconds, cpu, CLOCK is time.perf_counter))
        for name, fn in rows.items():
            speeds[name].append(throughput(fn, size))
    path.unlink()
    best = {name: max(v) for name, v in speeds.items()}
    ratios = {
        name: statistics.median(a / b for a, b in zip(speeds[name], speeds["openssl"], strict=True))
        for name in rows
    }
    ratios["overhead"] = statistics.median(
        a / b for a, b in zip(speeds["stream-memory"], speeds["aead-only"], strict=True)
    )
    return {"best": best, "ratio": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--chunk-kib", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3, help="openssl speed -seconds")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this core (-1: do not pin)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "decrypt.md")
    ap.add_argument(
        "--elapsed", action="store_true", help="wall-clock time on both sides (quiet machines)"
    )
    args = ap.parse_args()
    global CLOCK
    if args.elapsed:
        CLOCK = time.perf_counter
    cpu = None if args.cpu < 0 else args.cpu
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    size = args.size_mib * 1024 * 1024
    gb = 1e9
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; cryptography's {backend.openssl_version_text()}; "
        f"system `{subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}`",
        f"file: {args.size_mib} MiB plaintext, single thread pinned to core {cpu}, best of {args.repeats} "
        f"interleaved repeats, clock: {'wall' if args.elapsed else 'CPU time (openssl: user time)'} "
        "(speeds: best; ratios: median of the per-repeat ratios)",
        "",
        "| chunk | openssl speed -decrypt | stream, in memory | stream, page cache | AESGCM only "
        "| ratio in memory / openssl | ratio page cache / openssl | ratio in memory / AESGCM only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-decrypt-") as tmp:
        for kib in args.chunk_kib:
            r = bench(size, kib * 1024, args.repeats, args.seconds, cpu, Path(tmp))
            b, q = r["best"], r["ratio"]
            lines.append(
                f"| {kib} KiB | {b['openssl'] / gb:.2f} GB/s | {b['stream-memory'] / gb:.2f} GB/s "
                f"| {b['stream-file'] / gb:.2f} GB/s | {b['aead-only'] / gb:.2f} GB/s "
                f"| {q['stream-memory']:.2f}x | {q['stream-file']:.2f}x | {q['overhead']:.2f}x |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
