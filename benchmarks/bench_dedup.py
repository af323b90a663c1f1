#!/usr/bin/env python
"""Issue 24: dedup correctness, what cleaning + dedup cost, lanes of one compressed file, memory.

Everything in one run, so the ratios share the box's load (other engineers use these cores):

1. Correctness: ``planted_corpus`` (grammar documents of 24 sentences, 20 % exact copies, a third
   of them re-wrapped, 10 % near copies with one word replaced) through the real dedup stage
   (``trainer.data.deduplicate.run_dedup``: scan in 2 worker processes, join, clusters). Per
   original document group, the survivors are counted: exact copies removed (%), near copies whose
   word-5-gram Jaccard with their original is >= 0.9 removed (%), groups that lost every member
   (distinct documents removed, %).
2. Cost: ``python -m trainer.data.prepare --workers 2`` on the same random-word corpus (the one of
   ``bench_prepare_data.py``, a trained 32k BPE given as ``data.tokenizer``) with ``data.dedup`` =
   off, exact, minhash, interleaved for ``--rounds`` rounds; ratios of the median walls.
3. One ``.zst`` file of ``--zst-mb`` MB of text with 2 workers (lanes) vs the plain single-process
   encode loop over the same text (uncompressed, one core); then the same ``.zst`` read from moto's
   S3 on 127.0.0.1 (its own niced process).
4. Peak RSS of the whole process tree with ``dedup = exact`` (``--rss-modes`` for others),
   2 workers, ``--small-mb`` vs ``--big-mb`` corpus.

Usage: python benchmarks/bench_dedup.py [--docs 3000] [--mb 20] [--zst-mb 120] [--small-mb 20]
       [--big-mb 200] [--rounds 2] [--skip-s3] [--rss-modes exact] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_prepare_data import baseline, recipe, timed_prepare, train_tokenizer, write_corpus  # noqa: E402


def shingles(text: str) -> set[str]:
    words = re.sub(r"[^\w\s]+", " ", text.lower()).split()
    return {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def correctness(tmp: Path, docs: int, mode: str) -> dict:
    from artifacts.store import open_store
    from trainer.data.clean import CleanConfig
    from trainer.data.corpus import planted_corpus
    from trainer.data.deduplicate import run_dedup
    from trainer.data.plan import all_units
    from trainer.data.reading import iter_docs
    from trainer.data.sources import resolve_sources

    corpus = planted_corpus(docs, exact=0.2, near=0.1)
    src = tmp / f"planted-{mode}" / "corpus.txt"
    src.parent.mkdir(parents=True)
    src.write_text("".join(t + "\n" for _, _, t in corpus))
    sources = resolve_sources((str(src),), base=tmp, run=None, where="bench")
    units = [u for _, u in all_units(sources, 1 << 20)]
    store = open_store(str(tmp / f"store-{mode}"))
    args = {"clean": CleanConfig(), "seed": 42, "cache_uri": str(tmp / f"store-{mode}"),
            "fp": "bench", "scratch": str(tmp / f"scratch-{mode}")}  # fmt: skip
    t0 = time.perf_counter()
    res = run_dedup(mode, args, sources, units, units, store, workers=2, node_rank=0,
                    node_count=1, since=time.time(), writer=None, bar=False)  # fmt: skip
    wall = time.perf_counter() - t0
    drops = res.drops.get(0, frozenset())
    from trainer.data.dedup import doc_id

    offsets = [d.offset for d in iter_docs(src, sources[0]) if not isinstance(d, int)]
    assert len(offsets) == len(corpus)
    kept = [doc_id(0, off) not in drops for off in offsets]
    groups: dict[int, list[int]] = {}
    for i, (_, origin, _) in enumerate(corpus):
        groups.setdefault(origin, []).append(i)
    norm = lambda t: " ".join(t.split())  # noqa: E731
    exact_total = exact_missed = near_total = near_missed = lost = 0
    for members in groups.values():
        if not any(kept[i] for i in members):
            lost += 1
        original = next(i for i in members if corpus[i][0] == "distinct")
        base = shingles(corpus[original][2])
        classes: dict[str, list[int]] = {}
        for i in members:
            classes.setdefault(norm(corpus[i][2]), []).append(i)
        for cls in classes.values():  # every copy identical up to whitespace: exactly one may stay
            exact_total += len(cls) - 1
            exact_missed += max(0, sum(kept[i] for i in cls) - 1)
        alive = [cls for cls in classes.values() if any(kept[i] for i in cls)]
        for cls in classes.values():
            text = corpus[cls[0]][2]
            if corpus[cls[0]][0] != "near":
                continue
            s = shingles(text)
            if len(s & base) / len(s | base) >= 0.9:
                near_total += 1
                near_missed += int(any(kept[i] for i in cls) and len(alive) > 1)
    return {
        "mode": mode, "documents": len(corpus), "groups": len(groups), "dedup_wall_s": wall,
        "exact_copies": exact_total, "exact_removed_pct": 100 * (1 - exact_missed / max(exact_total, 1)),
        "near_copies_j90": near_total, "near_removed_pct": 100 * (1 - near_missed / max(near_total, 1)),
        "distinct_removed_pct": 100 * lost / len(groups),
    }  # fmt: skip


def with_dedup(config: Path, mode: str) -> Path:
    out = config.with_name(f"{config.stem}-{mode}.toml")
    out.write_text(config.read_text().replace("[data]\n", f'[data]\ndedup = "{mode}"\n'))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--mb", type=int, default=20, help="corpus of the cost rounds")
    ap.add_argument("--zst-mb", type=int, default=120)
    ap.add_argument("--small-mb", type=int, default=20)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--rss-modes", default="exact", help="comma-separated dedup modes of the RSS runs")
    ap.add_argument("--parts", default="correctness,cost,zst,rss", help="which measurements to run")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    results: dict = {"args": vars(a)}
    try:
        if "correctness" in parts:
            results["correctness"] = [correctness(tmp, a.docs, m) for m in ("exact", "minhash")]
            print(json.dumps(results["correctness"], indent=1), flush=True)

        corpus = write_corpus(tmp / "cost", a.mb * 10**6)
        tok = train_tokenizer(corpus, tmp / "tok")
        base_cfg = recipe(tmp, "cost", corpus, tok, 16)
        if "cost" in parts:
            results["cost"] = cost(tmp, base_cfg, a.rounds)
            print(json.dumps(results["cost"], indent=1), flush=True)
        if "zst" in parts:
            results["zst"] = zst_lanes(tmp, a.zst_mb, tok, a.skip_s3)
            print(json.dumps(results["zst"], indent=1), flush=True)
        if "rss" in parts:
            results["rss"] = rss_runs(tmp, tok, a)
            print(json.dumps(results["rss"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


def cost(tmp: Path, base_cfg: Path, rounds: int) -> dict:
    """prepare-data with dedup off / exact / minhash on one corpus, interleaved rounds."""
    walls: dict[str, list[float]] = {"off": [], "exact": [], "minhash": []}
    cpus: dict[str, list[float]] = {m: [] for m in walls}
    for r in range(rounds):
        for mode in walls:
            run = tmp / f"run-{mode}-{r}"
            t = timed_prepare(with_dedup(base_cfg, mode), run, 2)
            walls[mode].append(t["wall_s"])
            cpus[mode].append(t["cpu_s"])
            shutil.rmtree(run)
            shutil.rmtree(tmp / "scratch", ignore_errors=True)
    med = {m: statistics.median(w) for m, w in walls.items()}
    cpu = {m: statistics.median(c) for m, c in cpus.items()}
    return {"walls": walls, "cpu_s": cpus, "median": med,
            "exact_vs_off": med["exact"] / med["off"],
            "minhash_vs_off": med["minhash"] / med["off"],
            "cpu_exact_vs_off": cpu["exact"] / cpu["off"],
            "cpu_minhash_vs_off": cpu["minhash"] / cpu["off"]}  # fmt: skip


def rss_runs(tmp: Path, tok: Path, a: argparse.Namespace) -> dict:
    """Peak RSS of the process tree, small vs big corpus, per dedup mode."""
    rss = {}
    for mb in (a.small_mb, a.big_mb):
        folder = write_corpus(tmp / f"rss-{mb}", mb * 10**6)
        cfg = recipe(tmp, f"rss{mb}", folder, tok, 16)
        for mode in a.rss_modes.split(","):
            run = tmp / f"run-rss-{mb}-{mode}"
            rss[f"{mb}MB-{mode}"] = timed_prepare(with_dedup(cfg, mode), run, 2)
            shutil.rmtree(run)
            shutil.rmtree(tmp / "scratch", ignore_errors=True)
        shutil.rmtree(folder)
    for mode in a.rss_modes.split(","):
        rss[f"ratio-{mode}"] = (rss[f"{a.big_mb}MB-{mode}"]["peak_tree_rss_mb"]
                                / rss[f"{a.small_mb}MB-{mode}"]["peak_tree_rss_mb"])  # fmt: skip
    return rss


def zst_lanes(tmp: Path, mb: int, tok: Path, skip_s3: bool) -> dict:
    """One .zst file, 2 workers (lanes), vs the single-process loop over the plain text."""
    import zstandard

    folder = write_corpus(tmp / "zst-src", mb * 10**6)
    plain_dir = tmp / "zst-plain"
    plain_dir.mkdir()
    plain = plain_dir / "all.txt"
    with plain.open("wb") as out:
        for p in sorted(folder.iterdir()):
            out.write(p.read_bytes())
    shutil.rmtree(folder)
    zdir = tmp / "zst"
    zdir.mkdir()
    with plain.open("rb") as fin, (zdir / "all.txt.zst").open("wb") as fout:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(fin, fout)
    loop = baseline(plain_dir, tok, threads=False)
    cfg = with_dedup(recipe(tmp, "zst", zdir / "all.txt.zst", tok, 16), "off")
    lanes = timed_prepare(cfg, tmp / "run-zst", 2)
    out = {"text_mb": plain.stat().st_size / 1e6, "zst_mb": (zdir / "all.txt.zst").stat().st_size / 1e6,
           "loop": loop, "lanes_2_workers": lanes, "ratio": lanes["wall_s"] / loop["wall_s"]}  # fmt: skip
    shutil.rmtree(tmp / "run-zst")
    shutil.rmtree(tmp / "scratch", ignore_errors=True)
    if not skip_s3:
        import boto3
        from moto_s3 import start_moto_s3

        server = start_moto_s3()
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            boto3.client("s3").upload_file(str(zdir / "all.txt.zst"), "bench", "corpus/all.txt.zst")
            s3cfg = with_dedup(recipe(tmp, "zsts3", "s3://bench/corpus/", tok, 16), "off")
            s3 = timed_prepare(s3cfg, tmp / "run-zst-s3", 2)
            out["s3_lanes_2_workers"] = s3
            out["s3_ratio"] = s3["wall_s"] / loop["wall_s"]
        finally:
            server.terminate()
            server.wait()
    return out


if __name__ == "__main__":
    main()
