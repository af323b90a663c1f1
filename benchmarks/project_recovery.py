"""Node lost → training again on p4d.24xlarge: 7B 2 → 1, 13B 4 → 3, 70B 8 → 7, per recovery path.

Arithmetic only (no AWS, no GPU); every input is the plan's (``trainer/launch/plan.py``) or a
flag here, with its source:

- detection: the controller's poll (``WatchPolicy.poll_s`` 10 s; was 60 s);
- relaunch: SSM command delivered + Python + launcher up (60 s, assumed);
- replacement: spot launch + DLAMI boot + bootstrap from the wheelhouse (``replacement_s`` 420 s,
  assumed; AWS gives no number);
- fetch: 12 B/param of optimizer shards; 0.15–0.2 GB/s per Python process (0.175), one per GPU,
  ≤ 100 Gbps per node to S3; a survivor re-uses its local copy of its share (hash-checked at
  2.7 GB/s per NVMe device, 8 per node);
- resharding load (a changed world size, :mod:`trainer.checkpoint.reshard`): each surviving
  node fetches the old shard files its new ranks read that it does not already hold (computed
  with ``old_ranks_needed`` for the worst survivor and the worst lost node; a file is the
  checkpoint over 8·nodes ranks), then each of its 8 ranks reads its share out of them at
  ``--reshard-s-per-gb`` per process (measured on this box, ``bench_elastic_resume.py``) or the
  node's 8 NVMe devices at 2.7 GB/s, whichever is slower;
- the fallback (``ds_to_universal`` on the head, kept for checkpoints the reshard does not
  cover): ``--convert-s-per-gb`` (3 s/GB optimistic, 71 s/GB measured here with small tensors),
  then the universal form (12 B/param again) published by the head and fetched by every node;
- engine start + checkpoint load from NVMe: 90 s (assumed); first step: 8·N·T per micro-batch
  at 40 % of 312 TFLOP/s, 8 micro-batches per step, the largest micro-batch ≤ 32 that fits.

    python benchmarks/project_recovery.py [--poll 10] [--replacement 420] [--reshard-s-per-gb 1.4]
        [--convert-s-per-gb 3]
"""

from __future__ import annotations

import argparse

from project_notice import fitting_plan  # noqa: E402  (same folder; run as a script)

from trainer.launch import plan as P

CASES = [("7B", 2, 1), ("13B", 4, 3), ("70B", 8, 7)]
GPUS = 8  # ranks per p4d.24xlarge


def paths(name: str, before: int, after: int, a: argparse.Namespace) -> dict[str, dict]:
    full = fitting_plan(name, before, a)
    ckpt = full.checkpoint_gb
    node_gbps = min(8 * a.process_gbps, P.NODE_S3_GBPS)
    hash_s = (ckpt / before) / (P.NVME_GBPS * 8)  # a survivor checks its share
    step = full.step_s
    wait = {
        "detect": a.poll,
        "wait": a.replacement,
        "relaunch": a.relaunch,
        "fetch": max(hash_s, (ckpt / before) / node_gbps),  # the replacement fetches its share
        "reshard": 0.0,
        "engine": a.engine,
        "first step": step,
    }
    fewer = fitting_plan(name, after, a)
    first = fewer.step_s if fewer.fits else float("nan")
    file_gb = ckpt / (GPUS * before)
    share_gb = ckpt / (GPUS * after)  # one new rank's share
    read_s = max(share_gb * a.reshard_s_per_gb, (ckpt / after) / (P.NVME_GBPS * 8))
    cont = {
        "detect": a.poll,
        "wait": 0.0,
        "relaunch": a.relaunch,
        "fetch": P.survivor_fetch_files(before, after, GPUS) * file_gb / node_gbps,
        "reshard": read_s,
        "engine": a.engine,
        "first step": first,
    }
    others = ckpt - ckpt / before  # the fallback: the head fetches every other node's shards
    universal = {
        "detect": a.poll,
        "wait": 0.0,
        "relaunch": a.relaunch,
        "fetch": others / node_gbps,
        "reshard": ckpt * a.convert_s_per_gb + ckpt / node_gbps,  # convert, then others fetch it
        "engine": a.engine,
        "first step": first,
    }
    return {"wait for the replacement (same size, share fetch)": wait,
            "go on with survivors (resharding load)": cont,
            "go on with survivors (fallback: universal conversion)": universal}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--poll", type=float, default=10.0, help="controller poll, s")
    p.add_argument("--relaunch", type=float, default=60.0, help="SSM + Python + launcher, s")
    p.add_argument("--replacement", type=float, default=420.0, help="replacement InService, s")
    p.add_argument("--engine", type=float, default=90.0, help="engine start + local load, s")
    p.add_argument("--process-gbps", type=float, default=P.PROCESS_GBPS)
    p.add_argument("--reshard-s-per-gb", type=float, default=P.RESHARD_S_PER_GB,
                   help="resharding read per process, s/GB (bench_elastic_resume.py, this box)")
    p.add_argument("--convert-s-per-gb", type=float, default=3.0)
    p.add_argument("--mfu", type=float, default=0.4)
    a = p.parse_args()
    print("| model | nodes | path | detect | wait | relaunch | fetch | reshard | engine | "
          "first step | **total (min)** |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, before, after in CASES:
        for path, t in paths(name, before, after, a).items():
            total = sum(t.values())
            cells = " | ".join(f"{v:.0f}" for v in t.values())
            print(f"| {name} | {before} → {after if 'survivors' in path else before} | {path} | "
                  f"{cells} | **{total / 60:.1f}** |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
