"""One unit of ``prepare-data`` work, run in a worker process: a source range → committed token shards.

A unit is a whole source, or a byte range of a large uncompressed local one. Its documents are
tokenized with the fast tokenizer's ``encode_batch`` (the Rust core; no Python per token), each
followed by the EOS token, and split into train/validation by a seeded hash of the document's
byte offset (deterministic, independent of worker count and unit boundaries; no document is in
both). Whenever a unit has gathered ``shard_tokens`` training tokens (rounded up to the end of a
batch of documents) it writes a shard: ``train-UUUUU-PPPP.bin`` (flat little-endian uint16 or
uint32 tokens, Megatron-style) plus the validation tokens of the same documents, uploads both,
then a marker ``_parts/<fp>/uUUUUU-pPPPP.json`` that commits them. A relaunch starts each unit
after its last committed marker, skipping the bytes already tokenized without decoding them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.data.clean import CleanConfig, clean, empty_counts
from trainer.data.dedup import doc_id
from trainer.data.reading import BadInput, Doc, fetch_plain, iter_docs
from trainer.data.sources import Source

BATCH_DOCS = 1024
BATCH_BYTES = 1 << 20
_TOKENIZERS: dict[str, Any] = {}
_QUEUE: Any = None


@dataclass(frozen=True)
class Unit:
    """Documents of ``source`` whose line starts in ``[start, end)`` (``end`` -1: to the end); of a
    compressed source split ``lanes`` ways, those in the decompressed blocks ``lane`` owns."""

    index: int
    source: Source
    start: int = 0
    end: int = -1
    source_index: int = 0
    """The source's place in the corpus order (document ids and dedup's keep rule use it)."""
    lanes: int = 1
    lane: int = 0
    lane_block: int = 1 << 20
    """Decompressed bytes per block a lane owns (``trainer.data.plan``)."""

    @property
    def nbytes(self) -> int:
        return ((self.source.size if self.end < 0 else self.end) - self.start) // self.lanes

    def fetch(self, scratch: Path) -> tuple[Path, str]:
        """(local path, its compression) to read: :func:`~trainer.data.reading.fetch_plain`."""
        return fetch_plain(self.source, scratch, self.lanes)

    def docs(self, path: Path, skip_to: int = 0, compression: str | None = None) -> Any:
        """:func:`~trainer.data.reading.iter_docs` over this unit's share of ``path`` (from :meth:`fetch`)."""
        end = None if self.end < 0 else self.end
        return iter_docs(
            path, self.source, self.start, end, skip_to=skip_to,
            lanes=self.lanes, lane=self.lane, lane_block=self.lane_block, compression=compression,
        )  # fmt: skip


@dataclass(frozen=True)
class Job:
    """Everything a worker needs (picklable)."""

    unit: Unit
    tokenizer_json: str
    eos: int
    dtype: str
    shard_tokens: int
    seed: int
    val_fraction: float
    cache_uri: str
    fp: str
    scratch: str
    first_part: int = 0
    skip_to: int = 0
    clean: CleanConfig = CleanConfig()
    drops: frozenset[int] = frozenset()
    """Document ids (:func:`trainer.data.dedup.doc_id`) the dedup stage removed from this unit."""


def part_marker_key(fp: str, unit: int, part: int) -> str:
    return f"_parts/{fp}/u{unit:05d}-p{part:04d}.json"


def is_val(seed: int, identity: str, offset: int, fraction: float) -> bool:
    """Document-level hold-out: a seeded hash of (source content identity, byte offset)."""
    h = hashlib.blake2b(f"{seed}:{identity}:{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < fraction * 2.0**64


def queue_report(nbytes: int, ntokens: int) -> None:
    """Progress from a pool worker to the parent (no-op outside a pool)."""
    if _QUEUE is not None:
        _QUEUE.put((nbytes, ntokens))


def init_worker(queue: Any) -> None:
    """Pool initializer: progress goes to the parent through ``queue``."""
    global _QUEUE
    _QUEUE = queue
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already


def _tokenizer(path: str) -> Any:
    if path not in _TOKENIZERS:
        from tokenizers import Tokenizer

        _TOKENIZERS[path] = Tokenizer.from_file(path)
    return _TOKENIZERS[path]


def _flatten(encodings: list[Any], flags: list[bool], eos: int, dtype: str) -> tuple[Any, Any]:
    """One batch's documents as one array, EOS after each (a shard in memory costs 2-4 bytes a
    token, not ~36), and a per-token mask of the held-out ones (None when there are none).

    Each document's id list is copied into the array and dropped at once (the Python ints of a
    whole batch are never alive together: that alone cost ~5 % of the tokenizer's time).
    """
    import numpy as np

    lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    arr = np.empty(int(lens.sum()) + len(encodings), dtype=dtype)
    pos = 0
    for enc, n in zip(encodings, lens.tolist(), strict=True):
        arr[pos : pos + n] = enc.ids
        arr[pos + n] = eos
        pos += n + 1
    if not any(flags):
        return arr, None
    return arr, np.repeat(np.asarray(flags, dtype=bool), lens + 1)


def _write_shard(parts: list[Any], count: int, dtype: str, path: Path) -> dict[str, Any]:
    """Write the batches in order (no concatenated copy), hashing as they go."""
    h = hashlib.sha256()
    size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for part in parts:
            h.update(part.data)
            f.write(part.data)
            size += part.nbytes
    if size != count * (2 if dtype == "uint16" else 4):
        raise AssertionError(f"{path}: {size} bytes for {count} tokens")
    return {"tokens": count, "size": size, "sha256": h.hexdigest()}


def run_job(job: Job, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Tokenize one unit from ``job.skip_to``; returns the markers it committed (last one ``done``)."""
    from artifacts.store import open_store

    report = progress or queue_report
    tok = _tokenizer(job.tokenizer_json)
    unit, src = job.unit, job.unit.source
    store = open_store(job.cache_uri)
    local, comp = unit.fetch(Path(job.scratch) / "sources")
    out = Path(job.scratch) / "shards" / job.fp
    markers: list[dict[str, Any]] = []
    part = job.first_part
    train: list[Any] = []  # numpy arrays, one per batch
    val: list[Any] = []
    n_train = n_val = docs = 0
    texts: list[str] = []
    flags: list[bool] = []
    pending = 0
    cursor = job.skip_to
    stats = _fresh_stats()

    def encode() -> None:
        nonlocal n_train, n_val, pending
        if not texts:
            return
        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
        arr, held = _flatten(encodings, flags, job.eos, job.dtype)
        added = arr.size
        if held is None:  # no validation document in this batch (the common case)
            train.append(arr)
            n_train += arr.size
        else:
            for part, parts in ((arr[~held], train), (arr[held], val)):
                if part.size:
                    parts.append(part)
            n_val += int(held.sum())
            n_train += arr.size - int(held.sum())
        report(pending, added)
        texts.clear()
        flags.clear()
        pending = 0

    def commit(done: bool) -> None:
        nonlocal part, n_train, n_val, docs, stats
        marker: dict[str, Any] = {
            "unit": unit.index,
            "part": part,
            "end_offset": cursor,
            "docs": docs,
            "done": done,
            "train": None,
            "val": None,
            "stats": stats,
        }
        for split, toks, count in (("train", train, n_train), ("val", val, n_val)):
            if count:
                name = f"{job.fp}/{split}-{unit.index:05d}-{part:04d}.bin"
                info = _write_shard(toks, count, job.dtype, out / Path(name).name)
                entry = store.upload_file(out / Path(name).name, name)
                if entry.sha256 != info["sha256"]:
                    raise OSError(f"{name}: uploaded bytes differ from the shard written")
                (out / Path(name).name).unlink()
                marker[split] = {"path": name, **info}
        store.put_bytes(part_marker_key(job.fp, unit.index, part), json.dumps(marker).encode())
        markers.append(marker)
        part += 1
        train.clear()
        val.clear()
        n_train = n_val = docs = 0
        stats = _fresh_stats()

    # Small shards (tests) need small batches, or a shard overshoots its size by a whole batch.
    batch_bytes = min(BATCH_BYTES, max(256, job.shard_tokens // 2))
    # The loop makes no reference cycles (strings, int lists, numpy arrays), only millions of
    # short-lived lists that would trigger the cycle collector thousands of times (~2 % CPU).
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for item in unit.docs(local, skip_to=job.skip_to, compression=comp):
            if not isinstance(item, Doc):
                pending += item
                continue
            cursor = item.offset + 1
            pending += item.nbytes
            text, reason = clean(item.text, job.clean)
            if reason is None and doc_id(unit.source_index, item.offset) in job.drops:
                reason = "duplicate"
            stats["in"][0] += 1
            stats["in"][1] += item.nbytes
            if reason is not None:
                stats["dropped"][reason][0] += 1
                stats["dropped"][reason][1] += item.nbytes
                continue
            texts.append(text)
            flags.append(is_val(job.seed, src.identity, item.offset, job.val_fraction))
            docs += 1
            if len(texts) >= BATCH_DOCS or pending >= batch_bytes:
                encode()
                if n_train >= job.shard_tokens:
                    commit(done=False)
        encode()
    finally:
        if gc_was:
            gc.enable()
    report(pending, 0)
    commit(done=True)
    if not src.local and unit.lanes == 1:
        local.unlink(missing_ok=True)  # bounded disk: a downloaded source lives for one unit
        # (lanes share one download, removed with the scratch sources when preparation ends)
    return markers


def _fresh_stats() -> dict[str, Any]:
    """A marker's counts: documents and bytes read, and dropped per reason (the report sums them)."""
    return {"in": [0, 0], "dropped": {**empty_counts(), "duplicate": [0, 0]}}


def run_job_checked(job: Job) -> list[dict[str, Any]]:
    """:func:`run_job` for a pool: bad input comes back as a message, not a pickled traceback."""
    try:
        return run_job(job)
    except BadInput as err:
        return [{"error": str(err)}]


def job_dict(job: Job) -> dict[str, Any]:
    return asdict(job)
