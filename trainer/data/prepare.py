"""``prepare-data``: corpus → tokenizer → token shards in ``<run>/cache/data/``, committed by a manifest.

Its own step, run before any training collective exists (``invoke prepare-data``, ``invoke
pretrain``, or the trainer itself before ``torch.distributed`` starts; ``python -m
trainer.data.prepare`` on a node). Steps:

1. Resolve the sources and their content identities; the fingerprint hashes them with every
   setting that changes the tokens (not ``block_size``: blocks are cut when training reads).
   A committed cache with the same fingerprint is reused as it is.
2. Tokenizer: an existing folder (``data.tokenizer``), or a byte-level BPE trained on at most
   ``data.tokenizer_sample_bytes`` of text (sources in a seeded order, each from its start).
   Node 0 commits it under ``<fp>/tokenizer/``; other nodes wait for its marker.
3. Units (a source, or a ~4-shard byte range of a big uncompressed local file) go to worker
   processes (:mod:`trainer.data.worker`); on a cluster, node ``r`` of ``n`` takes the sources
   ``i`` with ``i % n == r``. Each shard is uploaded and then committed by a marker, so a relaunch
   redoes at most one shard per unit.
4. Node 0 waits for every unit's last marker, checks the corpus is big enough, and writes
   ``MANIFEST.json`` last (every shard and tokenizer file with size and SHA-256; the shard index
   in its metadata). Bad input stops every node with one line naming the file and line; nothing
   is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.run import Run
from trainer.config import TrainerConfig
from trainer.data.config import DataConfig
from trainer.data.pool import run_units
from trainer.data.progress import (
    Progress,
    record_prepared,
    record_status,
    record_stopped,
    sigterm_as_interrupt,
    status_writer,
)
from trainer.data.shards import (
    FORMAT,
    TOKENIZER_MARKER,
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
from trainer.data.worker import Job, Unit
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

UNIT_SHARDS = 4  # a byte-range unit holds about this many shards of text


@dataclass(frozen=True)
class Prepared:
    """A committed cache: where it is and what its manifest says."""

    cache_uri: str
    fingerprint: str
    metadata: dict[str, Any]
    reused: bool


def fingerprint(data: DataConfig, seed: int, sources: list[Source], tokenizer_identity: str) -> str:
    """What the shards depend on: content identities and the settings that change tokens or splits."""
    d = data
    payload = {
        "format": FORMAT,
        "seed": seed,
        "val_fraction": d.val_fraction,
        "vocab_size": d.vocab_size,
        "tokenizer": tokenizer_identity,
        "tokenizer_sample_bytes": d.tokenizer_sample_bytes,
        "shard_bytes": d.shard_bytes,
        "sources": [s.identity for s in sources],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def all_units(sources: list[Source], shard_bytes: int) -> list[tuple[int, Unit]]:
    """Every unit of the corpus as (source index, unit), numbered the same way on every node."""
    span = shard_bytes * UNIT_SHARDS
    units: list[tuple[int, Unit]] = []
    for i, src in enumerate(sources):
        ranges = [(0, -1)]
        if src.local and not src.compression and src.size > span:
            cuts = list(range(0, src.size, span))
            ranges = [
                (a, b if b < src.size else -1)
                for a, b in zip(cuts, cuts[1:] + [src.size], strict=True)
            ]
        units += [(i, Unit(len(units) + k, src, a, b)) for k, (a, b) in enumerate(ranges)]
    return units


def plan_units(
    sources: list[Source], shard_bytes: int, node_rank: int, node_count: int
) -> list[Unit]:
    """This node's units: those of the sources ``i`` with ``i % node_count == node_rank``."""
    return [u for i, u in all_units(sources, shard_bytes) if i % node_count == node_rank]


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
    markers = read_markers(store, fp)
    units = plan_units(sources, cfg.data.shard_bytes, node_rank, node_count)
    jobs, redo_bytes = [], 0
    for u in units:
        done, part, skip = resume_point(markers, u.index)
        if done:
            continue
        jobs.append(
            Job(u, str(tok_dir / "tokenizer.json"), eos, dtype, max(1, cfg.data.shard_bytes // width),
                cfg.run.seed, cfg.data.val_fraction, cache_uri, fp, str(scratch / "prepare"), part, skip)
        )  # fmt: skip
        redo_bytes += u.nbytes
    n_workers = workers or cfg.data.workers or os.cpu_count() or 1
    log.info(
        "data: %d source(s), %d unit(s) on this node, %d to do (%.1f MB), %d worker(s), cache %s",
        len(sources), len(units), len(jobs), redo_bytes / 1e6, n_workers, cache_uri,
    )  # fmt: skip
    progress = Progress(redo_bytes, writer, bar=bar)
    try:
        errors = run_units(jobs, n_workers, progress)
    finally:
        progress.close()
    if errors:
        raise fail(store, fp, errors[0], node_count == 1)
    if not lead:
        while committed_metadata(store).get("fingerprint") != fp:  # not an older run's manifest
            wait_for_any(store, fp, since, "node 0 to commit the manifest")
        return Prepared(cache_uri, fp, committed_metadata(store), reused=False)
    every = [u for _, u in all_units(sources, cfg.data.shard_bytes)]
    while True:
        markers = read_markers(store, fp)
        missing = [u.index for u in every if not resume_point(markers, u.index)[0]]
        if not missing:
            break
        wait_for_any(store, fp, since, f"{len(missing)} unit(s) of other nodes")
    meta, files = shard_index(markers, every, fp, dtype, eos, vocab, sources)
    try:
        check_size(meta, cfg.data.block_size, where=cfg.source or "data")
    except TrainerError as err:
        raise fail(store, fp, str(err), node_count == 1) from None
    entries = [FileEntry(e["path"], e["size"], e["sha256"]) for e in tok_files] + files
    meta["tokenizer"] = f"{fp}/tokenizer"
    store.put_bytes(MANIFEST_NAME, Manifest(files=entries, metadata=meta).to_json())
    if writer is not None:
        record_prepared(writer, progress.snapshot())
    log.info(
        "data: committed %s: %d train / %d val tokens in %d+%d shards",
        cache_uri, meta["train_tokens"], meta["val_tokens"], len(meta["train"]), len(meta["val"]),
    )  # fmt: skip
    return Prepared(cache_uri, fp, meta, reused=False)


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
