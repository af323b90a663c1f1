"""The dedup stage of ``prepare-data`` (``data.dedup`` ≠ ``off``): scan → join by partition → clusters.

1. Scan (worker pool, :mod:`trainer.data.scan`): every node keys its own units (the same units it
   tokenizes later) and stores the keys by partition.
2. Join: once every unit of every node is scanned, node ``r`` joins the partitions ``p`` with
   ``p % node_count == r`` in its worker pool (one partition in memory per worker) into duplicate edges,
   ``_dedup/<fp>/edges/p<p>.npz``.
3. Clusters: every node reads all edges (duplicates only, not the corpus) and computes the same
   clusters and drop set (:func:`trainer.data.dedup.clusters`); its tokenizer workers skip the
   dropped ids. Validation documents are drawn afterwards from the survivors, so no copy of a
   validation document can stay in training.

Each step is committed in the store, so a relaunch resumes after the last one done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from trainer.data.dedup import (
    BANDS,
    clusters,
    dropped,
    key_width,
    permutations,
    split_id,
)
from trainer.data.pool import WorkerPool, run_units
from trainer.data.progress import Progress, record_status
from trainer.data.scan import (
    JoinJob,
    ScanJob,
    edges_key,
    load_npz,
    run_join,
    run_scan,
    run_scan_checked,
    scan_marker_key,
)
from trainer.data.shards import fail, wait_for_any
from trainer.data.sources import Source
from trainer.data.worker import Unit

log = logging.getLogger(__name__)

#: Source bytes per key partition: bounds one partition's keys in memory (~4 GB of text holds
#: ~2 M web documents: 2 M × 14 bands × 20 B ≈ 560 MB of minhash keys, 80 MB of exact ones).
PARTITION_BYTES = 4_000_000_000
MAX_PARTITIONS = 1024
#: ``minhash`` shuts the pool down for a join in the parent above this much text (~20 MB of keys).
RELEASE_TEXT = 64_000_000
TOP_CLUSTERS = 10


@dataclass
class DedupResult:
    """What the tokenizer and the report need from the dedup stage."""

    drops: dict[int, frozenset[int]] = field(default_factory=dict)
    """Per source index, the document ids to skip."""
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def partitions_for(sources: list[Source]) -> int:
    """How many key partitions the corpus needs (from the bytes stored, known before any read)."""
    total = sum(s.size * (4 if s.compression else 1) for s in sources)
    return max(1, min(MAX_PARTITIONS, -(-total // PARTITION_BYTES)))


def run_dedup(
    mode: str,
    job_args: dict[str, Any],
    sources: list[Source],
    every: list[Unit],
    mine: list[Unit],
    store: Any,
    *,
    workers: int | WorkerPool,
    node_rank: int,
    node_count: int,
    since: float,
    writer: Any,
    bar: bool,
) -> DedupResult:
    """Scan this node's units, join its partitions, and return the corpus-wide drop set.

    ``workers``: the preparation's :class:`~trainer.data.pool.WorkerPool` (or a count).
    """
    import numpy as np

    fp = job_args["fp"]
    parts = partitions_for(sources)
    out = DedupResult()
    t0 = time.monotonic()
    done = {o.key for o in store.list(f"_dedup/{fp}/scan")}
    perms = permutations(job_args["seed"]) if mode == "minhash" else None
    jobs = [
        ScanJob(u, mode, partitions=parts, permutations=perms, **job_args)
        for u in mine
        if scan_marker_key(fp, u.index) not in done
    ]
    progress = Progress(sum(j.unit.nbytes for j in jobs), writer, bar=bar, stage="dedup-scan")
    if writer is not None:
        record_status(writer, progress.snapshot())
    try:
        errors = run_units(jobs, workers, progress, run_scan, run_scan_checked)
    finally:
        progress.close()
    if errors:
        raise fail(store, fp, errors[0], node_count == 1)
    scanned = [scan_marker_key(fp, u.index) for u in every]
    _wait(store, fp, since, f"_dedup/{fp}/scan", scanned, "other nodes' dedup scans")
    out.seconds["dedup_scan"] = round(time.monotonic() - t0, 3)

    t1 = time.monotonic()
    if writer is not None:
        record_status(writer, {"stage": "dedup-join", "bytes_done": 0, "bytes_total": 0})
    bands, _ = key_width(mode)
    joins = [
        JoinJob(p, tuple(u.index for u in every), bands, job_args["cache_uri"], fp)
        for p in range(node_rank, parts, node_count)
        if not store.exists(edges_key(fp, p))
    ]
    text = sum(s.size * (4 if s.compression else 1) for s in sources)
    if mode == "minhash" and isinstance(workers, WorkerPool) and len(joins) <= 1 and text > RELEASE_TEXT:
        # the join runs in this process and holds 14 bands of keys (~280 B a document): idle
        # workers would add their ~70 MB each to the peak (200 MB corpus: 485 MB vs 345 MB);
        # below RELEASE_TEXT the keys are smaller than an idle worker and a respawn costs more
        workers.release()
    progress = Progress(0, writer, bar=False, stage="dedup-join")
    try:
        run_units(joins, workers, progress, run_join, run_join)
    finally:
        progress.close()
    edge_keys = [edges_key(fp, p) for p in range(parts)]
    _wait(store, fp, since, f"_dedup/{fp}/edges", edge_keys, "other nodes' dedup joins")
    out.seconds["dedup_join"] = round(time.monotonic() - t1, 3)

    t2 = time.monotonic()
    zs = [load_npz(store, k) for k in edge_keys]
    members, labels = clusters(np.concatenate([z["edges"] for z in zs]))
    size_of = dict(
        zip(
            np.concatenate([z["ids"] for z in zs]).tolist(),
            np.concatenate([z["sizes"] for z in zs]).tolist(),
            strict=True,
        )
    )
    drop = dropped(members, labels)
    by_source: dict[int, set[int]] = {}
    for ident in drop.tolist():
        by_source.setdefault(split_id(ident)[0], set()).add(ident)
    out.drops = {k: frozenset(v) for k, v in by_source.items()}
    out.summary = _summary(mode, parts, members, labels, drop, size_of, sources)
    out.seconds["dedup_clusters"] = round(time.monotonic() - t2, 3)
    log.info(
        "data: dedup (%s) drops %d document(s) in %d cluster(s)",
        mode, out.summary["dropped_docs"], out.summary["clusters"],
    )  # fmt: skip
    return out


def _wait(store: Any, fp: str, since: float, prefix: str, keys: list[str], what: str) -> None:
    """Poll ``prefix`` until every key exists (a FAILED marker of any node stops the wait)."""
    while True:
        have = {o.key for o in store.list(prefix)}
        missing = [k for k in keys if k not in have]
        if not missing:
            return
        wait_for_any(store, fp, since, f"{what} ({len(missing)} left)")


def _summary(
    mode: str,
    parts: int,
    members: Any,
    labels: Any,
    drop: Any,
    size_of: dict[int, int],
    sources: list[Source],
) -> dict[str, Any]:
    """Counts and the largest clusters (ids, source names, offsets; never text)."""
    import numpy as np

    heads, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((heads, -counts))[:TOP_CLUSTERS]
    largest = []
    for i in order.tolist():
        ids = members[labels == heads[i]].tolist()
        largest.append(
            {
                "size": int(counts[i]),
                "kept": int(heads[i]),
                "documents": [
                    {"id": d, "source": sources[split_id(d)[0]].name, "offset": split_id(d)[1]}
                    for d in ids[:20]
                ],
            }
        )
    return {
        "mode": mode,
        "partitions": parts,
        "bands": BANDS if mode == "minhash" else 1,
        "clusters": len(heads),
        "docs_in_clusters": len(members),
        "dropped_docs": len(drop),
        "dropped_bytes": int(sum(size_of.get(d, 0) for d in drop.tolist())),
        "largest_clusters": largest,
    }
