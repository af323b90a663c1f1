#!/usr/bin/env python
"""prepare-data at scale on this box: throughput vs a plain encode loop, memory and launch time vs corpus size.

Everything in one run, so the ratios share the box's load (other engineers use these cores):

1. Corpora of random words (a 30k-word synthetic vocabulary, Zipf-like frequencies, ~10-200
   words per line, 8 files each) of 20 MB and 200 MB under /tmp (deleted at the end).
2. One BPE tokenizer (vocab 32000) trained once on the small corpus and given to every run as
   ``data.tokenizer``, so every throughput number is tokenization, not tokenizer training.
3. Baseline: one process reading the same files line by line and calling the same fast
   tokenizer's ``encode_batch_fast`` on batches of 1024 lines (its own threads off, i.e. one
   core), run before and after the prepare runs (the mean is the baseline).
4. ``python -m trainer.data.prepare`` on the 200 MB corpus with 1 and with 2 workers: wall time,
   tokens/s, peak RSS of the parent and of the largest worker; then on 20 MB (memory ratio).
5. The training loader (``trainer.data.loader.open_data``; every block of one epoch through a torch
   DataLoader in the global order, batch 8) on each prepared corpus: peak RSS.
6. ``python -m trainer`` (1 rank, tiny model, block 1024) on each prepared run: seconds from
   launch to the first logged training step.

Usage: python benchmarks/bench_prepare_data.py [--big-mb 200] [--small-mb 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILES = 8


def write_corpus(folder: Path, total_bytes: int, seed: int = 0) -> Path:
    """Random words with Zipf-like frequencies, one document per line, ``FILES`` files."""
    import numpy as np

    vocab_rng = np.random.default_rng(0)  # one vocabulary for every corpus: same tokens per byte
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(
        ["".join(vocab_rng.choice(letters, vocab_rng.integers(2, 11))) for _ in range(30_000)]
    )
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    folder.mkdir(parents=True)
    per_file = total_bytes // FILES
    for k in range(FILES):
        with (folder / f"part-{k:02d}.txt").open("w") as f:
            written = 0
            while written < per_file:
                idx = rng.choice(len(words), size=200_000, p=p)
                chunk = words[idx]
                lengths = rng.integers(10, 200, size=len(chunk) // 10)
                lines, i = [], 0
                for n in lengths:
                    lines.append(" ".join(chunk[i : i + n]))
                    i += n
                    if i >= len(chunk):
                        break
                text = "\n".join(lines) + "\n"
                f.write(text)
                written += len(text)
    return folder


def train_tokenizer(corpus: Path, out: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train(
        [str(p) for p in sorted(corpus.iterdir())],
        vocab_size=32000,
        special_tokens=["<|endoftext|>"],
    )
    eos = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos, unk_token=eos, pad_token=eos
    )
    tok.save_pretrained(out)
    return out


def baseline(corpus: Path, tokenizer: Path, threads: bool) -> dict:
    """The plain loop, in a fresh process (its RSS and thread setting are its own)."""
    code = f"""
import os, sys, time, json, resource
os.environ["TOKENIZERS_PARALLELISM"] = "{"true" if threads else "false"}"
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(tokenizer / "tokenizer.json")!r})
t0 = time.perf_counter(); n = 0; nbytes = 0
for path in sorted(os.listdir({str(corpus)!r})):
    batch = []
    with open(os.path.join({str(corpus)!r}, path), encoding="utf-8") as f:
        for line in f:
            nbytes += len(line)
            line = line.strip()
            if line:
                batch.append(line)
            if len(batch) == 1024:
                n += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(batch, add_special_tokens=False)); batch = []
    if batch:
        n += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(batch, add_special_tokens=False))
print(json.dumps({{"wall_s": time.perf_counter() - t0, "tokens": n, "bytes": nbytes,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    before = _children_cpu()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "cpu_s": _children_cpu() - before}


def _children_cpu() -> float:
    """CPU seconds (user + sys) of every finished child and grandchild of this process."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def recipe(tmp: Path, name: str, corpus: Path, tokenizer: Path, shard_mb: int) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f"""[run]
name = "{name}"
scratch_dir = "{tmp / "scratch"}"
[model]
family = "gpt2"
hidden_size = 64
num_layers = 2
num_heads = 4
[data]
train_files = ["{corpus}"]
tokenizer = "{tokenizer}"
block_size = 1024
val_fraction = 0.01
shard_bytes = {shard_mb * 1024 * 1024}
[training]
max_steps = 1
per_device_train_batch_size = 4
per_device_eval_batch_size = 4
gradient_accumulation_steps = 1
precision = "fp32"
save_steps = 1000
logging_steps = 1
[deepspeed]
zero_stage = 2
[spot]
enabled = false
"""
    )
    return path


def timed_prepare(config: Path, run: Path, workers: int) -> dict:
    """``python -m trainer.data.prepare`` in a child: wall, tokens, and the peak RSS of its process tree.

    The tree (parent + spawned workers) is sampled with psutil every 0.1 s: ``ru_maxrss`` of a
    child that forked and then exec'd reports the parent's size, not its own.
    """
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TWOSTAGE_PROGRESS": "0",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip  # one thread per process, as the baseline
    before = _children_cpu()
    cmd = [sys.executable, "-m", "trainer.data.prepare", "--config", str(config), "--run", str(run),
           "--workers", str(workers)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    root = psutil.Process(proc.pid)
    peak_tree = peak_parent = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs]
            peak_tree, peak_parent = max(peak_tree, sum(rss)), max(peak_parent, rss[0])
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{err[-3000:]}")
    meta = json.loads((run / "cache/data/MANIFEST.json").read_text())["metadata"]
    tokens = meta["train_tokens"] + meta["val_tokens"]
    return {"wall_s": wall, "cpu_s": _children_cpu() - before, "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "peak_tree_rss_mb": peak_tree / 2**20, "peak_parent_rss_mb": peak_parent / 2**20}  # fmt: skip


def loader_rss(config: Path, run: Path, scratch: Path) -> dict:
    code = f"""
import json, resource, sys, time
from trainer.config import load_config
from trainer.data.loader import open_data
cfg = load_config({str(config)!r})
d = open_data(cfg, {str(run)!r}, __import__("pathlib").Path({str(scratch)!r}), global_batch=8)
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator
t0 = time.perf_counter(); n = 0
for batch in DataLoader(d.train, batch_size=8, sampler=d.sampler, collate_fn=default_data_collator):
    n += batch["input_ids"].shape[0]
print("RESULT " + json.dumps({{"samples": n, "wall_s": time.perf_counter() - t0,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"loader failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT ") :])


def first_step(config: Path, run: Path) -> float:
    """Seconds from starting ``python -m trainer`` (1 rank) to its first logged training loss."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TWOSTAGE_PROGRESS": "0",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--config", str(config), "--run", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    seen = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if seen is None and re.search(r"'loss'|\"loss\"", line):
            seen = time.perf_counter() - t0
    proc.wait()
    if seen is None:
        raise SystemExit(f"no training step logged (exit {proc.returncode})")
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--small-mb", type=int, default=20)
    ap.add_argument("--tput-mb", type=int, default=40, help="corpus of the throughput rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-mb", type=int, default=16)
    ap.add_argument("--out", default="")
    ns = ap.parse_args()
    import statistics

    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-", dir="/tmp"))
    try:
        res: dict = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
        t = time.perf_counter()
        small = write_corpus(tmp / "small", ns.small_mb * 1_000_000, seed=1)
        big = write_corpus(tmp / "big", ns.big_mb * 1_000_000, seed=2)
        tput = write_corpus(tmp / "tput", ns.tput_mb * 1_000_000, seed=3)
        res["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tok = train_tokenizer(small, tmp / "tokenizer")
        res["tokenizer_train_s_small"] = time.perf_counter() - t
        cfg_big = recipe(tmp, "big", big, tok, ns.shard_mb)
        cfg_small = recipe(tmp, "small", small, tok, ns.shard_mb)
        cfg_tput = recipe(tmp, "tput", tput, tok, ns.shard_mb)
        print("corpora and tokenizer ready", flush=True)
        # Throughput: rounds in rotating order, so a load trend favours no side.
        kinds = ["baseline", "w1", "w2"]
        rounds: list[dict] = []
        for r in range(ns.rounds):
            row = {"loadavg": os.getloadavg()[0]}
            for kind in kinds[r % 3 :] + kinds[: r % 3]:
                if kind == "baseline":
                    got = baseline(tput, tok, threads=False)
                else:
                    run = tmp / f"run-tput-{r}-{kind}"
                    got = timed_prepare(cfg_tput, run, int(kind[1]))
                    shutil.rmtree(run)
                row[kind], row[f"{kind}_cpu"] = got["wall_s"], got["cpu_s"]
                row[f"{kind}_tokens"] = got["tokens"]
            row["w2_over_baseline"] = row["w2"] / row["baseline"]
            row["w1_over_baseline"] = row["w1"] / row["baseline"]
            print("round", r, row, flush=True)
            rounds.append(row)
        res["throughput_rounds"] = rounds
        med = {k: statistics.median(row[k] for row in rounds) for k in kinds}
        res["throughput_median_cpu_s"] = {
            k: statistics.median(row[f"{k}_cpu"] for row in rounds) for k in kinds
        }
        res["throughput_median_wall_s"] = med
        res["tput_tokens"] = rounds[0]["baseline_tokens"]
        res["prepare_big_w2"] = timed_prepare(cfg_big, tmp / "run-big", 2)
        print("big", res["prepare_big_w2"], flush=True)
        res["prepare_small_w2"] = timed_prepare(cfg_small, tmp / "run-small", 2)
        res["loader_big"] = loader_rss(cfg_big, tmp / "run-big", tmp / "ls-big")
        res["loader_small"] = loader_rss(cfg_small, tmp / "run-small", tmp / "ls-small")
        print("loaders", res["loader_big"], res["loader_small"], flush=True)
        res["first_step_big_s"] = first_step(cfg_big, tmp / "run-big")
        res["first_step_small_s"] = first_step(cfg_small, tmp / "run-small")
        res["ratios"] = {
            "prepare_w2_over_baseline_wall_median": med["w2"] / med["baseline"],
            "prepare_w1_over_baseline_wall_median": med["w1"] / med["baseline"],
            "w2_over_baseline_per_round": [row["w2_over_baseline"] for row in rounds],
            "w2_speedup_over_w1_median": med["w1"] / med["w2"],
            "prepare_w2_cpu_over_baseline_cpu": res["throughput_median_cpu_s"]["w2"]
            / res["throughput_median_cpu_s"]["baseline"],
            "prepare_w1_cpu_over_baseline_cpu": res["throughput_median_cpu_s"]["w1"]
            / res["throughput_median_cpu_s"]["baseline"],
            "prepare_tree_rss_big_over_small": res["prepare_big_w2"]["peak_tree_rss_mb"]
            / res["prepare_small_w2"]["peak_tree_rss_mb"],
            "loader_rss_big_over_small": res["loader_big"]["peak_rss_mb"]
            / res["loader_small"]["peak_rss_mb"],
            "first_step_big_over_small": res["first_step_big_s"] / res["first_step_small_s"],
        }
        res["loadavg_end"] = os.getloadavg()
        text = json.dumps(res, indent=2)
        print(text)
        if ns.out:
            Path(ns.out).write_text(text + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
