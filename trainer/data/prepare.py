"""``prepare-data``: corpus → tokenizer → token shards in ``<run>/cache/data/``, committed by a manifest.

Its own step, run before any training collective exists (``invoke prepare-data``, ``invoke
pretrain``, or the trainer itself before ``torch.distributed`` starts; ``python -m
trainer.data.prepare`` on a node). Steps:

1. Resolve the sources and their content identities; the fingerprint (:mod:`trainer.data.plan`)
   hashes them with every setting that changes the tokens, the splits or the surviving
   documents (cleaning and dedup included). A committed cache with the same fingerprint is
   reused as it is.
2. Tokenizer: an existing folder (``data.tokenizer``), or a byte-level BPE trained on at most
   ``data.tokenizer_sample_bytes`` of text (sources in a seeded order, each from its start).
   Node 0 commits it under ``<fp>/tokenizer/``; other nodes wait for its marker.
3. Units (a source, a ~4-shard byte range of a big uncompressed local file, or a lane of a
   compressed file or S3 object) are numbered the same on every node; node ``r`` of ``n`` takes
   the units ``u % n == r``.
4. Dedup (``data.dedup`` ≠ ``off``, :mod:`trainer.data.deduplicate`): every node scans its units
   (clean, key), the nodes join the keys by partition, and every node derives the same drop set.
5. Units go to worker processes (:mod:`trainer.data.worker`): clean, skip dropped documents,
   split validation from the survivors, tokenize. Each shard is uploaded and then committed by a
   marker, so a relaunch redoes at most one shard per unit.
6. Node 0 waits for every unit's last marker, checks the corpus is big enough, writes
   ``DATA_REPORT.json`` (:mod:`trainer.data.report`) and ``MANIFEST.json`` last (every shard,
   tokenizer file and the report with size and SHA-256; the shard index in its metadata). Bad
   input stops every node with one line naming the file and line; nothing is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from artifacts.run import Run
from trainer.config import TrainerConfig
from trainer.data.config import DataConfig
from trainer.data.plan import all_units, fingerprint, plan_units
from trainer.data.pool import WorkerPool, run_units
from trainer.data.progress import (
    Progress,
    record_prepared,
    record_status,
    record_stopped,
    sigterm_as_interrupt,
    status_writer,
)
from trainer.data.report import REPORT_NAME, build_report, encode, report_lines
from trainer.data.shards import (
    TOKENIZER_MARKER,
    CommittedMeanwhile,
    check_size,
    clean_stale,
    committed_metadata,
    fail,
    read_markers,
    resume_point,
    shard_index,
    wait_for,
    wait_for_any,
)
from trainer.data.sources import Source, resolve_sources
from trainer.data.tokenizer import build_tokenizer, tokenizer_facts, tokenizer_identity
from trainer.data.worker import Job
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Prepared:
    """A committed cache: where it is and what its manifest says."""

    cache_uri: str
    fingerprint: str
    metadata: dict[str, Any]
    reused: bool


def prepare(
    cfg: TrainerConfig,
    run: Run | str,
    scratch: Path,
    *,
    workers: int = 0,
    node_rank: int = 0,
    node_count: int = 1,
    bar: bool = True,
) -> Prepared:
    """Build (or reuse, or finish) the committed token-shard cache of ``run``; see the module doc."""
    from artifacts.store import open_store

    since = time.time()
    run = Run(run) if isinstance(run, str) else run
    if not 0 <= node_rank < node_count:
        raise TrainerError(f"--node-rank {node_rank} must be in [0, --node-count {node_count})")
    sources = config_sources(cfg.data, cfg.source, run, scratch)
    fp = fingerprint(cfg.data, cfg.run.seed, sources, tokenizer_identity(cfg.data, scratch))[:16]
    cache_uri = run.cache_data_uri
    store = open_store(cache_uri)
    existing = committed_metadata(store)
    if existing.get("fingerprint") == fp:
        log.info("data: reusing %s (%d train tokens)", cache_uri, existing.get("train_tokens", 0))
        return Prepared(cache_uri, fp, existing, reused=True)
    lead = node_rank == 0
    writer = status_writer(run, node_count) if lead else None
    try:
        return _build(
            cfg, run, scratch, sources, fp, store, existing, writer,
            workers=workers, node_rank=node_rank, node_count=node_count, bar=bar, since=since,
        )  # fmt: skip
    except CommittedMeanwhile:  # a late node: node 0 committed while this one waited
        meta = committed_metadata(store)
        log.info("data: %s was committed meanwhile (%d train tokens)", cache_uri, meta.get("train_tokens", 0))
        return Prepared(cache_uri, fp, meta, reused=True)
    except BaseException as err:  # every ending leaves a final state, then goes on as it was
        if writer is not None:
            record_stopped(writer, err)
        raise
    finally:
        if writer is not None:
            writer.close(timeout=60)


def _build(
    cfg: TrainerConfig,
    run: Run,
    scratch: Path,
    sources: list[Source],
    fp: str,
    store: Any,
    existing: dict[str, Any],
    writer: Any,
    *,
    workers: int,
    node_rank: int,
    node_count: int,
    bar: bool,
    since: float,
) -> Prepared:
    """:func:`prepare` past the reuse check: tokenizer, units, manifest (node 0 writes ``writer``)."""
    from artifacts.manifest import MANIFEST_NAME, FileEntry, Manifest

    cache_uri = run.cache_data_uri
    lead = node_rank == 0
    if lead:
        if existing:
            log.info("data: %s was prepared from other data or settings; rebuilding", cache_uri)
        clean_stale(store, fp)
    tok_dir = scratch / "prepare" / fp / "tokenizer"
    tok_marker = f"_parts/{fp}/{TOKENIZER_MARKER}"
    if lead and not store.exists(tok_marker):
        t0 = time.monotonic()
        record_status(writer, {"stage": "tokenizer", "bytes_done": 0, "bytes_total": 0})
        build_tokenizer(cfg.data, cfg.run.seed, sources, tok_dir, scratch)
        entries = [
            store.upload_file(f, f"{fp}/tokenizer/{f.name}").to_dict()
            for f in sorted(tok_dir.iterdir())
        ]
        store.put_bytes(tok_marker, json.dumps({"files": entries}).encode())
        log.info("data: tokenizer ready in %.1f s", time.monotonic() - t0)
    else:
        wait_for(store, tok_marker, fp, since, "node 0's tokenizer")
    tok_files = json.loads(store.get_bytes(tok_marker))["files"]
    if not (tok_dir / "tokenizer.json").is_file():
        for e in tok_files:
            store.download_file(e["path"], tok_dir / Path(e["path"]).name)
    eos, vocab = tokenizer_facts(tok_dir)
    dtype = "uint16" if vocab <= 65535 else "uint32"
    width = 2 if dtype == "uint16" else 4
    seconds = {"sources_tokenizer": round(time.time() - since, 3)}
    units = plan_units(sources, cfg.data.shard_bytes, node_rank, node_count)
    every = [u for _, u in all_units(sources, cfg.data.shard_bytes)]
    n_workers = workers or cfg.data.workers or os.cpu_count() or 1
    # one set of worker processes for the dedup scan, the joins and tokenizing (spawned once)
    with WorkerPool(n_workers) as pool:
        dedup = None
        if cfg.data.dedup != "off":
            from trainer.data.deduplicate import run_dedup

            job_args = {"clean": cfg.data.clean, "seed": cfg.run.seed, "cache_uri": cache_uri,
                        "fp": fp, "scratch": str(scratch / "prepare")}  # fmt: skip
            dedup = run_dedup(
                cfg.data.dedup, job_args, sources, every, units, store, workers=pool,
                node_rank=node_rank, node_count=node_count, since=since, writer=writer, bar=bar,
            )  # fmt: skip
            seconds.update(dedup.seconds)
        t0 = time.monotonic()
        markers = read_markers(store, fp)
        jobs, redo_bytes = [], 0
        for u in units:
            done, part, skip = resume_point(markers, u.index)
            if done:
                continue
            drops = dedup.drops.get(u.source_index, frozenset()) if dedup else frozenset()
            jobs.append(
                Job(u, str(tok_dir / "tokenizer.json"), eos, dtype, max(1, cfg.data.shard_bytes // width),
                    cfg.run.seed, cfg.data.val_fraction, cache_uri, fp, str(scratch / "prepare"), part, skip,
                    cfg.data.clean, drops)
            )  # fmt: skip
            redo_bytes += u.nbytes
        log.info(
            "data: %d source(s), %d unit(s) on this node, %d to do (%.1f MB), %d worker(s), cache %s",
            len(sources), len(units), len(jobs), redo_bytes / 1e6, n_workers, cache_uri,
        )  # fmt: skip
        progress = Progress(redo_bytes, writer, bar=bar)
        try:
            errors = run_units(jobs, pool, progress)
        finally:
            progress.close()
            # S3 objects downloaded for the tokenizer sample, the dedup scan or shared lanes
            shutil.rmtree(scratch / "prepare" / "sources", ignore_errors=True)
    if errors:
        raise fail(store, fp, errors[0], node_count == 1)
    if not lead:
        while committed_metadata(store).get("fingerprint") != fp:  # not an older run's manifest
            wait_for_any(store, fp, since, "node 0 to commit the manifest")
        return Prepared(cache_uri, fp, committed_metadata(store), reused=False)
    while True:
        markers = read_markers(store, fp)
        missing = [u.index for u in every if not resume_point(markers, u.index)[0]]
        if not missing:
            break
        wait_for_any(store, fp, since, f"{len(missing)} unit(s) of other nodes")
    seconds["tokenizing"] = round(time.monotonic() - t0, 3)
    meta, files = shard_index(markers, every, fp, dtype, eos, vocab, sources)
    try:
        check_size(meta, cfg.data.block_size, where=cfg.source or "data")
    except TrainerError as err:
        raise fail(store, fp, str(err), node_count == 1) from None
    seconds["total"] = round(time.time() - since, 3)
    report = build_report(
        markers,
        {"clean": asdict(cfg.data.clean), "dedup": cfg.data.dedup},
        dedup.summary if dedup else None,
        seconds,
        {"train": meta["train_tokens"], "val": meta["val_tokens"]},
    )
    body = encode(report)
    store.put_bytes(REPORT_NAME, body)
    report_entry = FileEntry(REPORT_NAME, len(body), hashlib.sha256(body).hexdigest())
    entries = [FileEntry(e["path"], e["size"], e["sha256"]) for e in tok_files] + files
    meta["tokenizer"] = f"{fp}/tokenizer"
    meta["report"] = REPORT_NAME
    store.put_bytes(MANIFEST_NAME, Manifest(files=[*entries, report_entry], metadata=meta).to_json())
    store.delete([o.key for o in store.list(f"_dedup/{fp}")])  # keys are only needed until now
    if writer is not None:
        record_prepared(writer, progress.snapshot())
    log.info(
        "data: committed %s: %d train / %d val tokens in %d+%d shards",
        cache_uri, meta["train_tokens"], meta["val_tokens"], len(meta["train"]), len(meta["val"]),
    )  # fmt: skip
    for line in report_lines(report):
        log.info("data: %s", line)
    return Prepared(cache_uri, fp, meta, reused=False)


def read_report(cache_uri: str) -> dict[str, Any] | None:
    """The committed ``DATA_REPORT.json`` of a cache (None for a cache prepared before reports)."""
    from artifacts.store import open_store

    store = open_store(cache_uri)
    return json.loads(store.get_bytes(REPORT_NAME)) if store.exists(REPORT_NAME) else None


def config_sources(data: DataConfig, source: str, run: Run | None, scratch: Path) -> list[Source]:
    """The recipe's sources (``source``: the recipe file, for relative paths and messages); the
    generated corpus is written once into ``scratch``."""
    if data.generated_corpus:
        from trainer.data.corpus import write_corpus

        path = scratch / "sources" / f"generated-{data.generated_corpus_bytes}.txt"
        if not path.exists():
            write_corpus(path, data.generated_corpus_bytes)
        files: tuple[str, ...] = (str(path),)
    else:
        files = data.train_files
    base = Path(source).parent if source else Path.cwd()
    return resolve_sources(
        files,
        base=base,
        run=run,
        where=source or "data",
        hash_cache=scratch / "source-hashes.json",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.data.prepare --config FILE --run URI [--workers N] [--node-rank R --node-count N]``."""
    import argparse

    from artifacts.errors import UserError
    from artifacts.logs import init_logging

    p = argparse.ArgumentParser(
        prog="python -m trainer.data.prepare", description=__doc__.splitlines()[0]
    )
    p.add_argument("--config", required=True)
    p.add_argument("--run", "--run-uri", dest="run", default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--node-count", type=int, default=1)
    args = p.parse_args(argv)
    init_logging()
    try:
        run_uri, _ = run_prepare(
            args.config, args.run, args.workers, args.node_rank, args.node_count
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def run_prepare(
    config: str | Path, run: str | None, workers: int = 0, node_rank: int = 0, node_count: int = 1
) -> tuple[str, Prepared]:
    """Load the recipe, then :func:`prepare_run`."""
    from trainer.config import load_config

    return prepare_run(load_config(config), run, workers, node_rank, node_count)


def prepare_run(
    cfg: TrainerConfig, run: str | None, workers: int = 0, node_rank: int = 0, node_count: int = 1
) -> tuple[str, Prepared]:
    """Pick the run prefix and scratch folder the trainer will use, and prepare there."""
    from trainer.env import run_uri as resolve_run_uri
    from trainer.env import scratch_dir

    if workers < 0:
        raise TrainerError(f"--workers must be >= 0, got {workers}")
    run_uri = resolve_run_uri(cfg.run, run)
    with sigterm_as_interrupt():
        return run_uri, prepare(
            cfg,
            Run(run_uri),
            scratch_dir(cfg.run, Run(run_uri)),
            workers=workers,
            node_rank=node_rank,
            node_count=node_count,
        )


if __name__ == "__main__":
    sys.exit(main())
