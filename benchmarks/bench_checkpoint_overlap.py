"""Step time while a checkpoint uploads vs while none does, in the same run (target <= 1.05x).

Runs the real trainer (``python -m trainer`` code path, 2 CPU ranks, DeepSpeed ZeRO-3, the DeepSpeed
launcher) on an enlarged tiny recipe that saves often, with the run prefix on moto's S3 server
(default) or a local folder. Inside each rank a timing callback is added to the Trainer (by
wrapping ``Trainer.__init__``, nothing in the trainer changes): it records every optimizer step's
wall time (``on_step_begin`` → ``on_step_end``, so saves and evals themselves are excluded) and
whether this node's committer had an upload in flight during it. Rank 0 writes the records; the
driver compares the medians of "upload in flight" vs "no upload" steps.

    python benchmarks/bench_checkpoint_overlap.py [--store moto|local] [--nproc 2] [--hidden 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- inside each rank -------------------------------------------------------------------------
def rank_main(argv: list[str]) -> int:
    import transformers

    from trainer.loop.callbacks import CommitCallback

    records: list[dict] = []

    class StepTimer(transformers.TrainerCallback):
        def __init__(self, committer):
            self.committer = committer
            self.t0 = 0.0
            self.busy0 = False

        def _busy(self) -> bool:
            return self.committer is not None and self.committer._pending > 0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.busy0 = self._busy()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t0
            records.append(
                {"step": state.global_step, "seconds": dt, "upload": self.busy0 or self._busy()}
            )

        def on_train_end(self, args, state, control, **kw):
            out = os.environ.get("BENCH_OUT")
            if out and state.is_world_process_zero:
                durations = self.committer.durations if self.committer else {}
                Path(out).write_text(json.dumps({"steps": records, "commit_seconds": durations}))

    original = transformers.Trainer.__init__

    def patched(self, *a, **kw):
        callbacks = list(kw.get("callbacks") or [])
        committer = next((c.committer for c in callbacks if isinstance(c, CommitCallback)), None)
        kw["callbacks"] = [*callbacks, StepTimer(committer)]
        original(self, *a, **kw)

    transformers.Trainer.__init__ = patched
    from trainer.__main__ import main

    return main(argv)


# -- driver -----------------------------------------------------------------------------------
def recipe(tmp: Path, hidden: int, layers: int, save_steps: int, epochs: int) -> Path:
    text = (ROOT / "configs" / "pretrain-tiny.toml").read_text()
    subs = {
        "save_steps": save_steps,
        "num_train_epochs": epochs,
        "hidden_size": hidden,
        "num_layers": layers,
        "per_device_train_batch_size": 4,
        "keep_last": 2,
        "logging_steps": 1000,
    }
    for key, value in subs.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    path = tmp / "bench.toml"
    path.write_text(text + "\n[spot]\nenabled = false\n")
    return path


def summarize(steps: list[dict], warmup: int) -> dict:
    steps = [s for s in steps if s["step"] > warmup]
    busy = [s["seconds"] for s in steps if s["upload"]]
    idle = [s["seconds"] for s in steps if not s["upload"]]
    if not busy or not idle:
        raise SystemExit(f"not enough steps of both kinds (upload {len(busy)}, idle {len(idle)})")
    return {
        "steps_upload": len(busy),
        "steps_idle": len(idle),
        "median_upload_s": statistics.median(busy),
        "median_idle_s": statistics.median(idle),
        "mean_upload_s": statistics.fmean(busy),
        "mean_idle_s": statistics.fmean(idle),
        "ratio_median": statistics.median(busy) / statistics.median(idle),
        "ratio_mean": statistics.fmean(busy) / statistics.fmean(idle),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=["moto", "local"], default="moto")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--save-steps", type=int, default=15)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--nproc", type=int, default=2, help="ranks (1 leaves a core free, like a GPU node)"
    )
    p.add_argument("--warmup", type=int, default=5, help="first steps left out")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    a = p.parse_args()

    from artifacts.ports import free_port
    from trainer.launch.single_node import launcher_env

    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    env = launcher_env(
        {
            **os.environ,
            "TWOSTAGE_SCRATCH": str(tmp / "scratch"),
            "BENCH_OUT": str(tmp / "steps.json"),
        }
    )
    server = None
    if a.store == "moto":
        import boto3
        from moto_s3 import start_moto_s3

        # moto stands in for S3, whose CPU is not ours: its own process at the lowest priority.
        server = start_moto_s3(env)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        run = f"s3://{bucket}/runs/overlap"
    else:
        run = str(tmp / "store" / "overlap")
    config = recipe(tmp, a.hidden, a.layers, a.save_steps, a.epochs)
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(a.nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(Path(__file__).resolve()), "--rank-program", "--config", str(config), "--run", run,
    ]  # fmt: skip
    started = time.monotonic()
    with open(tmp / "run.log", "wb") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.monotonic() - started
    if server is not None:
        server.terminate()
        server.wait(10)
    out = tmp / "steps.json"
    if not out.exists():
        print((tmp / "run.log").read_text()[-3000:])
        raise SystemExit(f"run failed (exit {code}); log: {tmp / 'run.log'}")
    data = json.loads(out.read_text())
    summary = summarize(data["steps"], a.warmup)
    commit = list(data["commit_seconds"].values())
    sizes = re.findall(
        r"committed to \S+ \(\d+ files, ([\d.]+) MB\)", (tmp / "run.log").read_text()
    )
    summary.update(
        store=a.store,
        nproc=a.nproc,
        hidden=a.hidden,
        layers=a.layers,
        checkpoint_mb=float(sizes[-1]) if sizes else None,
        commits=len(commit),
        median_commit_s=statistics.median(commit) if commit else None,
        wall_s=round(wall, 1),
        launcher_exit=code,
    )
    print(json.dumps(summary, indent=2))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if "--rank-program" in sys.argv:
        sys.argv.remove("--rank-program")
        sys.exit(rank_main(sys.argv[1:]))
    sys.exit(main())
