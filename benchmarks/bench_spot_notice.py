"""Spot notice → checkpoint committed, on the real trainer (2 CPU ranks, ZeRO-3, DeepSpeed launcher).

A fake IMDSv2 server (tests/trainer/fake_imds.py) announces a termination once the run has
committed its first checkpoint; the run prefix is on moto's S3 server (its own low-priority
process, standing in for S3) or a local folder. Measured:

* announce → the watcher sees it (poll interval + round trip),
* notice → the interruption checkpoint is committed and every rank is past the final barrier
  (``notice_to_commit_s`` the trainer writes into ``STATUS.json``; includes the wait for the step
  boundary, the local save, any upload still in flight and this one),
* announce → ``MANIFEST.json`` of that step visible in the store (driver's clock),
* announce → launcher exit (75).

    python benchmarks/bench_spot_notice.py [--store moto|local] [--hidden 64 --layers 2] [--poll 1]
    python benchmarks/bench_spot_notice.py --before /work/main --rounds 1   # before/after, one run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from artifacts.run import Run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def recipe(tmp: Path, hidden: int, layers: int, poll: float) -> Path:
    text = (ROOT / "configs" / "pretrain-tiny.toml").read_text()
    for key, value in {
        "save_steps": 8,
        "num_train_epochs": 20,
        "hidden_size": hidden,
        "num_layers": layers,
        "keep_last": 2,
    }.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    path = tmp / "spot.toml"
    path.write_text(text + f"\n[spot]\npoll_interval = {poll}\n")
    return path


def start_moto(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    import boto3
    from moto_s3 import start_moto_s3

    server = start_moto_s3(env)
    bucket = f"spot-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return server, f"s3://{bucket}/runs/spot"


def measure(a: argparse.Namespace, code: Path) -> dict:
    """One run of the trainer from source tree ``code`` (its PYTHONPATH): notice → commit."""
    from fake_imds import FakeIMDS

    from artifacts.ports import free_port
    from trainer.checkpoint.resume import committed_steps
    from trainer.launch.single_node import launcher_command, launcher_env

    tmp = Path(tempfile.mkdtemp(prefix="bench-spot-"))
    env = launcher_env({**os.environ, "TWOSTAGE_SCRATCH": str(tmp / "scratch")})
    env["PYTHONPATH"] = str(code)
    server = None
    if a.store == "moto":
        server, run = start_moto(env)
    else:
        run = str(tmp / "store" / "spot")
    config = recipe(tmp, a.hidden, a.layers, a.poll)
    try:
        with FakeIMDS() as imds, open(tmp / "run.log", "wb") as log:
            env["TWOSTAGE_IMDS_ENDPOINT"] = imds.endpoint
            proc = subprocess.Popen(
                launcher_command(config, run, 2, free_port()),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=code,
            )
            # Polling the store: the only signal that crosses the process boundary.
            while not committed_steps(Run(run)):
                if proc.poll() is not None:
                    raise SystemExit(
                        f"run ended early (exit {proc.returncode}); log {tmp / 'run.log'}"
                    )
                time.sleep(0.05)
            before = set(committed_steps(Run(run)))
            announced = time.time()
            imds.announce()
            seen: dict[int, float] = {}  # step -> when its manifest was first visible
            while proc.poll() is None:
                for s in set(committed_steps(Run(run))) - before - set(seen):
                    seen[s] = time.time()
                time.sleep(0.05)
            exited = time.time()
        st = Run(run).read_status()
        status = st.to_dict() if st else {"global_step": -1, "state": "missing"}
        committed = committed_steps(Run(run))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    step = status["global_step"]
    seen_commit = seen.get(step)
    text = (tmp / "run.log").read_text(errors="replace")
    size = re.search(rf"checkpoint {step} committed to \S+ \(\d+ files, ([\d.]+) MB\)", text)
    upload = re.search(rf"checkpoint {step} committed to .*? ([\d.]+)s after the save", text)
    return {
        "code": str(code),
        "store": a.store,
        "hidden": a.hidden,
        "layers": a.layers,
        "poll_interval_s": a.poll,
        "launcher_exit": proc.returncode,
        "status_state": status["state"],
        "interrupted_at_step": step,
        "committed": step in committed,
        "checkpoint_mb": float(size.group(1)) if size else None,
        "notice_to_commit_s": status.get("notice_to_commit_s"),
        "save_to_commit_s": float(upload.group(1)) if upload else None,
        "announce_to_manifest_visible_s": None
        if seen_commit is None
        else round(seen_commit - announced, 2),
        "announce_to_exit_s": round(exited - announced, 2),
        "loadavg": os.getloadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=["moto", "local"], default="moto")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--poll", type=float, default=1.0, help="IMDS poll interval, seconds")
    p.add_argument(
        "--before",
        type=Path,
        default=None,
        help="another source tree (e.g. /work/main): measure it and this one alternately, one run",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --before: ABBA rounds")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if a.before is None:
        result: dict = measure(a, ROOT)
    else:
        order: list[Path] = []
        for _ in range(a.rounds):
            order += [a.before.resolve(), ROOT, ROOT, a.before.resolve()]
        runs = []
        for code in order:
            runs.append(measure(a, code))
            print(json.dumps(runs[-1]), flush=True)
        result = {"runs": runs}
        for name, code in (("before", a.before.resolve()), ("after", ROOT)):
            values = sorted(
                r["notice_to_commit_s"] for r in runs if r["code"] == str(code) and r["committed"]
            )
            result[name] = {
                "code": str(code),
                "notice_to_commit_s": values,
                "median": values[len(values) // 2] if values else None,
            }
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
