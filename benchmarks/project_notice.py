"""Notice → commit on p4d.24xlarge for 7B / 13B / 70B, in configurations that fit, in-flight upload counted.

Arithmetic only (no AWS, no GPU). Every input is the plan's (``trainer/launch/plan.py``, one
definition per fact) or a flag here:

- checkpoint: 12 B/param of ZeRO-3 optimizer shards, split evenly over the nodes;
- upload: 0.15–0.2 GB/s per Python process (0.175 used; s3transfer reaches ~110 MiB/s at 300 %
  CPU on a CPU without SHA-NI, like p4d's Cascade Lake), one per GPU, capped at 100 Gbps per node
  (the primary ENA interface carries TCP to S3; EFA's 400 Gbps does not);
- local save: 2.7 GB/s per NVMe device, 8 devices per p4d;
- compute: 8·N·T FLOPs per micro-batch (gradient checkpointing on, as the p4d recipe has it) at
  40 % of 312 TFLOP/s; the largest micro-batch ≤ 32 that fits in memory (the plan's arithmetic);
- in flight: a periodic checkpoint whose upload started ``--inflight-age`` seconds before the
  notice (0: just started, the worst case); the decision is ``trainer.spot.deadline.decide_upload``.

    python benchmarks/project_notice.py [--process-gbps 0.175] [--inflight-age 0] [--poll 5]
"""

from __future__ import annotations

import argparse

from trainer.launch import plan as P
from trainer.spot.deadline import decide_upload

#: Llama-2 dimensions (hidden, layers, heads, kv heads, intermediate), vocab 32000, 1024 tokens.
LLAMA = {
    "7B": (4096, 32, 32, 32, 11008),
    "13B": (5120, 40, 40, 40, 13824),
    "70B": (8192, 80, 64, 8, 28672),
}
CONFIGS = [("7B", 1), ("7B", 2), ("7B", 4), ("13B", 1), ("13B", 2), ("13B", 4), ("70B", 4),
           ("70B", 8), ("70B", 16)]  # fmt: skip


def shape(name: str) -> P.ModelShape:
    h, layers, heads, kv, inter = LLAMA[name]
    return P.ModelShape("llama", h, layers, heads, kv, inter, 32000, 1024, tied=False)


def fitting_plan(name: str, nodes: int, a: argparse.Namespace) -> P.Plan:
    """The plan at the largest micro-batch ≤ 32 that fits (micro-batch 1 if none does)."""
    for mb in (32, 16, 8, 4, 2, 1):
        knobs = P.Knobs(micro_batch=mb, accumulation=8, checkpointing=True, spot_poll_s=a.poll,
                        mfu=a.mfu)  # fmt: skip
        plan = P.make_plan(shape(name), knobs, nodes=nodes, instance_type="p4d.24xlarge",
                           usd_per_node_hour=None, price_source="-")  # fmt: skip
        if plan.fits:
            return plan
    return plan


def notice(plan: P.Plan, a: argparse.Namespace) -> dict:
    per_node = plan.per_node_gb * 1e9
    bps = min(8 * a.process_gbps, P.NODE_S3_GBPS) * 1e9
    save_s = per_node / (P.NVME_GBPS * 8 * 1e9)
    detect = a.poll + 1.0 + plan.micro_batch_s  # the notice is read, the micro-batch ends
    left = 120.0 - detect
    inflight = max(0.0, per_node - a.inflight_age * bps)
    kw = dict(now=0.0, deadline=left, checkpoint_bytes=int(per_node), throughput_bps=bps,
              save_s=save_s, fixed_s=2.0)  # fmt: skip
    clean = decide_upload(**kw)
    multi = plan.nodes > 1
    busy = decide_upload(inflight_bytes=int(inflight), can_abandon=not multi, **kw)
    return {"upload_s": per_node / bps, "save_s": save_s, "clean": clean, "busy": busy,
            "detect": detect}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--process-gbps", type=float, default=P.PROCESS_GBPS,
                   help="one upload process to S3, GB/s (0.15–0.2)")  # fmt: skip
    p.add_argument("--inflight-age", type=float, default=0.0,
                   help="seconds the periodic upload had run when the notice came")  # fmt: skip
    p.add_argument("--poll", type=float, default=5.0, help="IMDS notice poll, s")
    p.add_argument("--mfu", type=float, default=0.4)
    a = p.parse_args()
    print("| model | nodes | fits at micro-batch | per node (GB) | micro-batch (s) | save (s) | "
          "upload (s) | notice → commit, nothing in flight (s) | with a periodic upload in "
          "flight: action, notice → commit (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, nodes in CONFIGS:
        plan = fitting_plan(name, nodes, a)
        if not plan.fits:
            print(f"| {name} | {nodes} | does not fit ({plan.per_gpu_gb:.0f} GB/GPU at "
                  f"micro-batch 1) | | | | | | |")  # fmt: skip
            continue
        n = notice(plan, a)

        def total(d, n=n) -> str:
            if d.action in ("skip",):
                return f"skip: {d.needed_s:.0f} s needed > {d.available_s:.0f} s left"
            if d.action == "finish-only":
                return f"finish-only (older step): {n['detect'] + d.needed_s:.0f}"
            return f"{d.action}: {n['detect'] + d.needed_s:.0f}"

        print(f"| {name} | {nodes} | {plan.micro_batch} | {plan.per_node_gb} | "
              f"{plan.micro_batch_s:.1f} | {n['save_s']:.1f} | {n['upload_s']:.0f} | "
              f"{total(n['clean'])} | {total(n['busy'])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
