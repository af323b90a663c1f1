"""Elastic resume: relaunch → first step at the same vs a changed world size, and conversion cost.

1. **Resume overhead.** One tiny run (``configs/pretrain-tiny.toml``, 2 CPU ranks) trains 20 steps
   and commits. Then, alternating so machine load drifts hit both: a relaunch on **2** ranks
   (same world size: plain resume) and a relaunch on **1** rank (changed world size: universal
   conversion of the checkpoint, commit of the converted form, load), each into a fresh copy of
   the run folder so every changed-size relaunch pays the conversion. Measured: wall time from
   calling ``launch_local`` to the first optimizer step of the relaunch (the trainer records it
   in ``training_summary.json``). Ratio changed / same.
2. **Conversion cost per GB.** A bigger GPT-2 (default 512 wide, 8 layers: ~26M parameters) trains
   2 steps on 2 ranks and saves; ``trainer.checkpoint.elastic.to_universal`` converts that checkpoint
   (median of ``--rounds``). Reported: ZeRO shard bytes in, seconds, seconds per GB (the 7B
   projection: a 7B ZeRO-3 checkpoint with fp32 master weights and Adam moments is ~84 GB of
   shards; conversion is single-process, disk and ``torch.save`` bound).

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


def resume_overhead(work: Path, rounds: int) -> dict:
    from trainer.launch.single_node import launch_local

    base = work / "base"
    assert launch_local(recipe(work / "a.toml", max_steps=20), str(base), nproc=2) == 0
    again = recipe(work / "b.toml", max_steps=25)
    same, changed, gaps = [], [], []
    for i in range(rounds):
        for nproc, out in ((2, same), (1, changed)):
            run = work / f"run-{i}-{nproc}"
            shutil.copytree(base, run)
            os.environ["TWOSTAGE_SCRATCH"] = str(work / f"scratch-{i}-{nproc}")
            launched = time.time()
            assert launch_local(again, str(run), nproc=nproc) == 0
            out.append(first_step_seconds(run, launched))
            if nproc == 1:  # loss continuity: the same step after a same-size resume
                ref = first_loss_after(work / f"run-{i}-2", 21)
                gaps.append(abs(first_loss_after(run, 21) - ref) / ref)
            print(
                f"round {i + 1}: {nproc} rank(s): relaunch → first step {out[-1]:.1f} s", flush=True
            )
    return {
        "same_world_s": same,
        "changed_world_s": changed,
        "ratio": statistics.median(changed) / statistics.median(same),
        "first_loss_rel_gap": gaps,
    }


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
    return {"shard_bytes": shards, "seconds": times, "s_per_gb": sec / (shards / 1e9)}


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
    print(
        f"relaunch → first step: same world {statistics.median(over['same_world_s']):.1f} s, "
        f"changed {statistics.median(over['changed_world_s']):.1f} s, ratio {over['ratio']:.2f}x, "
        f"first loss after resume within {max(over['first_loss_rel_gap']):.1e} (relative); "
        f"conversion {conv['shard_bytes'] / 1e6:.0f} MB of shards in "
        f"{statistics.median(conv['seconds']):.1f} s = {conv['s_per_gb']:.1f} s/GB (load {load:.1f})"
    )


if __name__ == "__main__":
    main()
