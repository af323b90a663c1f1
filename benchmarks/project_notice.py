"""Notice → commit on p4d.24xlarge for 7B / 13B / 70B on 1, 2, 4 nodes, from measured and published inputs.

Arithmetic only (no AWS, no GPU): the inputs are the per-core upload cost measured by
``bench_rank_uploads.py`` on this box, AWS's published p4d numbers and the stated assumptions
below; BENCHMARKS.md §3.4 prints the table this writes. Change an input on the command line to
see its effect.

    python benchmarks/project_notice.py [--uploader-gbps 0.25] [--save-gbps 1.0] [--uploaders 8]
"""

from __future__ import annotations

import argparse

GPUS_PER_NODE = 8
A100_BF16_FLOPS = 312e12
#: p4d.24xlarge: 400 Gbps networking (4 × 100 Gbps); S3 through the VPC gateway endpoint is
#: in-Region traffic, which may use the instance's full bandwidth (EC2 network bandwidth docs);
#: one flow is capped at 5 Gbps, so the uploaders open many connections (10 per file).
NODE_NETWORK_GBPS = 400 / 8
BYTES_PER_PARAM = 2 + 4 + 4 + 4  # bf16 weights + fp32 master + Adam m + Adam v (ZeRO-3 shards)
MODELS = {
    # name: (parameters, tokens per GPU per micro-batch: the brief's 32 × 1024 where it fits in
    # 40 GB; 70B needs a smaller micro-batch to fit, 4 × 1024 assumed)
    "7B": (7e9, 32 * 1024),
    "13B": (13e9, 32 * 1024),
    "70B": (70e9, 4 * 1024),
}


def budget(params: float, tokens: int, nodes: int, a: argparse.Namespace) -> dict:
    total = params * BYTES_PER_PARAM / 1e9
    per_node = total / nodes
    per_rank = per_node / GPUS_PER_NODE
    micro_batch_s = 6 * params * tokens / (A100_BF16_FLOPS * a.mfu)
    node_gbps = min(a.uploaders * a.uploader_gbps, NODE_NETWORK_GBPS)
    detect = a.poll + 1.0
    save = per_rank / a.save_gbps
    upload = per_node / node_gbps
    commit = 2.0  # manifest, part-record polling (1 s, then backoff), a few requests
    worst = detect + micro_batch_s + save + upload + commit
    return {
        "shards_gb": round(total),
        "per_node_gb": round(per_node, 1),
        "micro_batch_s": round(micro_batch_s, 1),
        "step_s": round(micro_batch_s * a.accumulation, 0),
        "save_s": round(save, 1),
        "upload_s": round(upload, 1),
        "worst_s": round(worst),
        "fits": worst <= 120 - a.margin,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uploader-gbps", type=float, default=0.25, help="one uploader process, GB/s")
    p.add_argument("--uploaders", type=int, default=GPUS_PER_NODE, help="upload processes per node")
    p.add_argument("--save-gbps", type=float, default=1.0, help="local save per rank, GB/s")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--poll", type=float, default=5.0)
    p.add_argument("--accumulation", type=int, default=8)
    p.add_argument("--margin", type=float, default=10.0)
    p.add_argument("--save-minutes", type=float, default=30.0)
    a = p.parse_args()
    print(
        "| model | nodes | shards (GB) | per node (GB) | micro-batch (s) | save (s) | upload (s) "
        "| **worst notice → commit (s)** | fits 120 s | work lost per preemption |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (params, tokens) in MODELS.items():
        for nodes in (1, 2, 4):
            b = budget(params, tokens, nodes, a)
            if b["fits"]:
                lost = f"≤ 1 step of compute ({b['step_s']:.0f} s), avg ½"
            else:
                lost = (
                    f"notice save skipped: ≤ {a.save_minutes:.0f} min + one upload "
                    f"({b['upload_s'] / 60:.1f} min), avg {a.save_minutes / 2:.0f} min"
                )
            print(
                f"| {name} | {nodes} | {b['shards_gb']} | {b['per_node_gb']} | "
                f"{b['micro_batch_s']} | {b['save_s']} | {b['upload_s']} | **{b['worst_s']}** | "
                f"{'yes' if b['fits'] else 'no'} | {lost} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
