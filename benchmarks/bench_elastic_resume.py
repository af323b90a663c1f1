"""Elastic resume (P11): relaunch → first step at a changed vs the same world size; bytes read.

1. **Resume overhead (P11).** Two tiny runs (``configs/pretrain-tiny.toml``) train 20 steps and
   commit, one on 1 CPU rank and one on 2. Each round relaunches a fresh copy of each to step 25:
   1 → 1 and 2 → 1 (target 1 rank), 2 → 2 and 1 → 2 (target 2 ranks); the changed sizes go through
   the resharding load (:mod:`trainer.checkpoint.reshard`). Measured: wall time from calling
   ``launch_local`` to the relaunch's first optimizer step (``first_step_unix`` in
   ``training_summary.json``). Ratios changed / same at the same target size (target ≤ 1.5×).
2. **Bytes read per new rank, and the rate.** A bigger GPT-2 (default 512 wide, 8 layers: ~26M
   parameters) trains 2 steps on 2 ranks and saves; for new world sizes 1, 3 and 4 every new
   rank's slices (fp32 + both Adam moments, every parameter) are read with
   :class:`~trainer.checkpoint.reshard.SliceReader`: bytes read against the rank's share of the
   optimizer state (target ≤ 1.2× share + one old file) and s/GB. For reference the same
   checkpoint is converted with ``ds_to_universal`` (``to_universal``; median of ``--rounds``).

    python benchmarks/bench_elastic_resume.py [--rounds 3] [--hidden 512] [--layers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "configs" / "pretrain-tiny.toml"


def recipe(
    dest: Path, *, max_steps: int, hidden: int | None = None, layers: int | None = None
) -> Path:
    text = TINY.read_text()
    text = re.sub(r"(?m)^save_steps = .*$", "save_steps = 20", text)
    text = re.sub(r"(?m)^logging_steps = .*$", "logging_steps = 1", text)
    text = text.replace("[training]\n", f"[training]\nmax_steps = {max_steps}\n")
    if hidden:
        text = re.sub(r"(?m)^hidden_size = .*$", f"hidden_size = {hidden}", text)
        text = re.sub(r"(?m)^num_layers = .*$", f"num_layers = {layers}", text)
        text = re.sub(r"(?m)^save_steps = .*$", f"save_steps = {max_steps}", text)
    dest.write_text(text)
    return dest


def first_loss_after(run: Path, step: int) -> float:
    """Training loss logged at ``step`` (the first step after the resume at ``step - 1``)."""
    doc = json.loads((run / "final" / "loss_history.json").read_text())
    return next(float(e["loss"]) for e in doc["train"] if e["step"] == step)


def first_step_seconds(run: Path, launched: float) -> float:
    summary = json.loads((run / "final" / "training_summary.json").read_text())
    return float(summary["first_step_unix"]) - launched


def _relaunch(work: Path, base: Path, again: Path, nproc: int, tag: str) -> tuple[Path, float]:
    from trainer.launch.single_node import launch_local

    run = work / f"run-{tag}"
    shutil.copytree(base, run)
    os.environ["TWOSTAGE_SCRATCH"] = str(work / f"scratch-{tag}")
    launched = time.time()
    assert launch_local(again, str(run), nproc=nproc) == 0
    return run, first_step_seconds(run, launched)


def resume_overhead(work: Path, rounds: int) -> dict:
    """P11: relaunch → first step at a changed world size against the same world size, at the
    same target size (so start-up costs of 1 vs 2 ranks on these 2 cores do not enter)."""
    from trainer.launch.single_node import launch_local

    bases = {}
    for nproc in (1, 2):
        bases[nproc] = work / f"base{nproc}"
        os.environ["TWOSTAGE_SCRATCH"] = str(work / f"scratch-base{nproc}")
        assert launch_local(recipe(work / "a.toml", max_steps=20), str(bases[nproc]), nproc=nproc) == 0
    again = recipe(work / "b.toml", max_steps=25)
    legs = {"1->1": [], "2->1": [], "2->2": [], "1->2": []}
    gaps, fetched = [], {}
    for i in range(rounds):
        for leg in legs:
            old, new = int(leg[0]), int(leg[-1])
            run, seconds = _relaunch(work, bases[old], again, new, f"{i}-{old}{new}")
            legs[leg].append(seconds)
            if old != new:
                status = json.loads((run / "STATUS.json").read_text())
                fetched[leg] = status["resumed"]["fetch"]["reshard"]
            print(f"round {i + 1}: {leg} rank(s): relaunch → first step {seconds:.1f} s", flush=True)
        # loss continuity: step 21 after 2 -> 1 against 2 -> 2 (same global batch 32)
        ref = first_loss_after(work / f"run-{i}-22", 21)
        gaps.append(abs(first_loss_after(work / f"run-{i}-21", 21) - ref) / ref)
    med = {leg: statistics.median(v) for leg, v in legs.items()}
    return {
        "seconds": legs,
        "ratio_2to1_vs_1to1": med["2->1"] / med["1->1"],
        "ratio_1to2_vs_2to2": med["1->2"] / med["2->2"],
        "first_loss_rel_gap": gaps,
        "node_fetch": fetched,
    }


def reshard_reads(ckpt: Path, old: int, news: list[int]) -> list[dict]:
    """Bytes each new rank's resharding load reads (every parameter, fp32 + both moments) against
    its share of the optimizer state and the size of one old file, and the read rate."""
    from trainer.checkpoint.reshard import KEYS, SliceReader, optim_files, tag_of

    tag_dir = ckpt / tag_of(ckpt)
    files = optim_files(tag_dir)
    file_bytes = max(p.stat().st_size for p in files.values())
    state_bytes = sum(s.numel for s in SliceReader(tag_dir, old).slots.values()) * 4 * len(KEYS)
    out = []
    for new in news:
        for rank in range(new):
            reader = SliceReader(tag_dir, old)
            started = time.perf_counter()
            for name in reader.slots:
                for key in KEYS:
                    reader.partition(name, key, rank, new)
            seconds = time.perf_counter() - started
            share = state_bytes / new
            out.append({
                "old": old, "new": new, "rank": rank, "bytes_read": reader.bytes_read,
                "share_bytes": share, "one_old_file_bytes": file_bytes,
                "read_vs_share": reader.bytes_read / share,
                "within_target": reader.bytes_read <= 1.2 * share + file_bytes,
                "old_files_opened": sorted(reader.opened), "seconds": seconds,
                "s_per_gb": seconds / (reader.bytes_read / 1e9),
            })  # fmt: skip
    return out


def conversion_cost(work: Path, rounds: int, hidden: int, layers: int) -> dict:
    from trainer.checkpoint.elastic import to_universal
    from trainer.launch.single_node import launch_local

    run = work / "big"
    os.environ["TWOSTAGE_SCRATCH"] = str(work / "scratch-big")
    cfg = recipe(work / "big.toml", max_steps=2, hidden=hidden, layers=layers)
    assert launch_local(cfg, str(run), nproc=2) == 0
    (ckpt,) = sorted((run / "checkpoints").iterdir())
    shards = sum(p.stat().st_size for p in ckpt.glob("global_step*/*") if p.is_file())
    times = []
    for i in range(rounds):
        dest = work / f"universal-{i}"
        started = time.perf_counter()
        to_universal(ckpt, dest)
        times.append(time.perf_counter() - started)
        shutil.rmtree(dest)
    sec = statistics.median(times)
    return {"shard_bytes": shards, "seconds": times, "s_per_gb": sec / (shards / 1e9),
            "reshard": reshard_reads(ckpt, 2, [1, 3, 4])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    os.chdir(ROOT)
    from artifacts.logs import init_logging

    init_logging()
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        work = Path(tmp)
        over = resume_overhead(work, args.rounds)
        conv = conversion_cost(work, args.rounds, args.hidden, args.layers)
    load = os.getloadavg()[0]
    print(json.dumps({"resume": over, "conversion": conv, "load_avg_1m": load}, indent=2))
    med = {leg: statistics.median(v) for leg, v in over["seconds"].items()}
    print(
        "P11 relaunch → first step (median s): "
        + ", ".join(f"{leg} {s:.1f}" for leg, s in med.items())
        + f"; 2->1 / 1->1 = {over['ratio_2to1_vs_1to1']:.2f}x, "
        f"1->2 / 2->2 = {over['ratio_1to2_vs_2to2']:.2f}x; first loss after 2->1 within "
        f"{max(over['first_loss_rel_gap']):.1e} of 2->2 (relative)"
    )
    for r in conv["reshard"]:
        print(
            f"reshard 2->{r['new']} rank {r['rank']}: read {r['bytes_read'] / 1e6:.1f} MB = "
            f"{r['read_vs_share']:.2f}x its share (one old file {r['one_old_file_bytes'] / 1e6:.0f} MB)"
            f", old files {r['old_files_opened']}, {r['s_per_gb']:.2f} s/GB"
        )
    print(
        f"universal conversion {conv['shard_bytes'] / 1e6:.0f} MB of shards in "
        f"{statistics.median(conv['seconds']):.1f} s = {conv['s_per_gb']:.1f} s/GB (load {load:.1f})"
    )


if __name__ == "__main__":
    main()
