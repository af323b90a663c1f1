"""The dedup stage's work in worker processes: a unit's scan, and a key partition's join.

Scan: clean each document of a unit, key it, store the keys by partition.

For every partition ``p`` the unit writes ``_dedup/<fp>/p<p>/u<unit>.npz`` (per band: the ids of
the documents whose band key falls in ``p``, the keys, the documents' byte sizes), then the marker
``_dedup/<fp>/scan/u<unit>.json`` that commits them (a relaunch skips a committed unit). No text
is stored: only ids (source index and offset), keys and sizes.

Join (:func:`run_join`): one partition's keys from every unit, joined into edges (id, lowest id
sharing a key), ``_dedup/<fp>/edges/p<p>.npz``; partitions run in parallel in the pool.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.clean import CleanConfig, clean, clean_ascii_lines
from trainer.data.dedup import (
    BANDS,
    OFFSET_BITS,
    MinHasher,
    doc_id,
    exact_key,
    join_partition,
    key_width,
    partition_of,
    permutations,
)
from trainer.data.reading import BadInput, decode_line, iter_line_chunks
from trainer.data.sources import Source
from trainer.data.worker import Unit, queue_report


@dataclass(frozen=True)
class ScanJob:
    """Everything a scan worker needs (picklable)."""

    unit: Unit
    mode: str
    clean: CleanConfig
    seed: int
    partitions: int
    cache_uri: str
    fp: str
    scratch: str
    permutations: tuple[Any, Any] | None = None
    """``minhash``: the seed's permutations (:func:`trainer.data.dedup.permutations`)."""


def scan_marker_key(fp: str, unit: int) -> str:
    return f"_dedup/{fp}/scan/u{unit:05d}.json"


def part_key(fp: str, partition: int, unit: int) -> str:
    return f"_dedup/{fp}/p{partition:04d}/u{unit:05d}.npz"




def run_scan(job: ScanJob, progress: Any = None) -> list[dict[str, Any]]:
    """Key every kept document of the unit and commit the keys; returns ``[marker]``."""
    import numpy as np

    from artifacts.store import open_store

    t0 = time.monotonic()
    report = progress or queue_report
    unit, src = job.unit, job.unit.source
    store = open_store(job.cache_uri)
    local, comp = unit.fetch(Path(job.scratch) / "sources")
    bands, words = key_width(job.mode)
    hasher = None
    if job.mode == "minhash":
        hasher = MinHasher(job.permutations or permutations(job.seed))
    ids: list[int] = []
    sizes: list[int] = []
    keys: list[Any] = []
    shingles: list[Any] = []
    base = doc_id(unit.source_index, 0)
    end = None if unit.end < 0 else unit.end
    chunks = iter_line_chunks(
        local, src, unit.start, end, unit.lanes, unit.lane, unit.lane_block, compression=comp
    )  # fmt: skip
    for offset, chunk in chunks:
        kept = None if src.jsonl else clean_ascii_lines(chunk, job.clean)
        if kept is None:
            kept = _clean_lines(chunk, offset, local, src, comp, job.clean)
        rel, nbytes, texts = kept
        ids.extend([base | (offset + r) for r in rel])
        sizes.extend(nbytes)
        if job.mode == "minhash":
            shingles.extend(texts)
            if len(shingles) >= 1024:  # keep 14 keys a document, not its text
                keys.append(_band_keys(hasher, shingles))
        else:
            keys.extend(map(exact_key, texts))
        report(len(chunk), 0)
    if ids and (ids[-1] & ((1 << OFFSET_BITS) - 1)) != ids[-1] - base:  # offsets only grow
        raise BadInput(f"{src.name}: a document starts beyond 1 TiB of one source; split the file")
    id_arr = np.asarray(ids, dtype=np.uint64)
    size_arr = np.asarray(sizes, dtype=np.uint32)
    if job.mode == "minhash":
        keys.append(_band_keys(hasher, shingles))
        key_arr = np.concatenate(keys).reshape(len(ids), bands, words)
    else:
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint64).reshape(len(ids), bands, words)
    part = partition_of(key_arr, job.partitions)  # (docs, bands)
    for p in range(job.partitions):
        arrays: dict[str, Any] = {}
        for b in range(bands):
            rows = part[:, b] == p
            arrays[f"id{b}"], arrays[f"key{b}"] = id_arr[rows], key_arr[rows, b, :]
            arrays[f"size{b}"] = size_arr[rows]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        store.put_bytes(part_key(job.fp, p, unit.index), buf.getvalue())
    marker = {"unit": unit.index, "kept": len(ids), "seconds": round(time.monotonic() - t0, 3)}
    store.put_bytes(scan_marker_key(job.fp, unit.index), json.dumps(marker).encode())
    return [marker]  # a downloaded object stays for the tokenizer pass


def _clean_lines(
    chunk: bytes, offset: int, path: Path, src: Source, comp: str, cfg: CleanConfig
) -> tuple[list[int], list[int], list[str]]:
    """:func:`~trainer.data.clean.clean_ascii_lines` for any chunk: per line, as the tokenizer
    reads it (decode with its errors, jsonl records, NFC)."""
    lines = chunk.split(b"\n")
    ended = not lines[-1]
    if ended:
        lines.pop()
    rel: list[int] = []
    sizes: list[int] = []
    texts: list[str] = []
    off = 0
    for i, raw in enumerate(lines):
        n = len(raw) + (1 if ended or i < len(lines) - 1 else 0)
        text = decode_line(raw, path, src, offset + off, i + 1, offset, comp)
        if text:
            text, reason = clean(text, cfg)
            if reason is None:
                rel.append(off)
                sizes.append(n)
                texts.append(text)
        off += n
    return rel, sizes, texts


def _band_keys(hasher: MinHasher, shingles: list[Any]) -> Any:
    """Band keys of the buffered documents (and empty the buffer)."""
    import numpy as np

    if not shingles:
        return np.empty((0, BANDS), dtype=np.uint64)
    keys = hasher.band_keys(hasher.signatures(*hasher.shingle_hashes(shingles)))
    shingles.clear()
    return keys


@dataclass(frozen=True)
class JoinJob:
    """One key partition to join (picklable): every unit's file of it, in unit order."""

    partition: int
    units: tuple[int, ...]
    bands: int
    cache_uri: str
    fp: str


def edges_key(fp: str, partition: int) -> str:
    return f"_dedup/{fp}/edges/p{partition:04d}.npz"


def load_npz(store: Any, key: str) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(store.get_bytes(key))) as z:
        return {k: z[k] for k in z.files}


def run_join(job: JoinJob, progress: Any = None) -> list[dict[str, Any]]:
    """Join one partition (its keys in memory, nothing else) into duplicate edges; commit them."""
    import numpy as np

    from artifacts.store import open_store

    store = open_store(job.cache_uri)
    loaded = [load_npz(store, part_key(job.fp, job.partition, u)) for u in job.units]
    edges, ids, sizes = [], [], []
    for b in range(job.bands):  # a band's arrays are dropped once joined: one band's keys at a time
        b_ids = np.concatenate([z.pop(f"id{b}") for z in loaded])
        b_edges = join_partition(b_ids, np.concatenate([z.pop(f"key{b}") for z in loaded]))
        involved = np.isin(b_ids, b_edges.ravel())  # the sizes of documents with an edge, no more
        edges.append(b_edges)
        ids.append(b_ids[involved])
        sizes.append(np.concatenate([z.pop(f"size{b}") for z in loaded])[involved])
    del loaded
    buf = io.BytesIO()
    np.savez(buf, edges=np.concatenate(edges), ids=np.concatenate(ids), sizes=np.concatenate(sizes))
    store.put_bytes(edges_key(job.fp, job.partition), buf.getvalue())
    return [{"partition": job.partition, "edges": sum(map(len, edges))}]


def run_scan_checked(job: ScanJob) -> list[dict[str, Any]]:
    """:func:`run_scan` for a pool: bad input comes back as a message, not a pickled traceback."""
    try:
        return run_scan(job)
    except BadInput as err:
        return [{"error": str(err)}]
