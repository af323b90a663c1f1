"""Parallel checkpoint uploads: one low-priority uploader process per local rank (pure planning here).

Why several processes: one uploader hashes (SHA-256 while the bytes stream) and drives boto3 for
a whole node's checkpoint, and a single Python process tops out around 1-2 GB/s — 98 GB of
7B ZeRO-3 shards on one node then take a minute or more, against a 120 s spot notice. Every
rank writes its own shard files, so every rank's files can move in their own process: hashing
and HTTP work spread over as many cores as there are ranks (a p4d node has 96 vCPUs for 8 GPU
ranks), at niceness 19 while training runs. The node's part record (written once every
uploader has finished) lists all its ranks' files; the head commits when every node's part is
up, so a checkpoint missing one uploader's files is never committed.

The AWS CRT transfer client was the other option the issue named; it is not used: its fast
path reads the file in C, so the full-file SHA-256 the manifest needs would cost a second read
pass (its own checksums are per part, a composite that is not a file hash). See BENCHMARKS.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: File names that belong to one rank: ZeRO shards (optimizer and model states) and RNG state.
_RANK_PATTERNS = (
    re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_"),
    re.compile(r"(?:^|/)rng_state_(\d+)\.pth$"),
)
SHARED = "shared"


def owner_rank(relpath: str) -> int | None:
    """The global rank whose shard ``relpath`` is, or None for a file of the whole checkpoint."""
    for pattern in _RANK_PATTERNS:
        m = pattern.search(relpath)
        if m:
            return int(m.group(1))
    return None


def assign_uploads(sizes: Mapping[str, int], uploaders: int) -> list[list[str]]:
    """Split a node's checkpoint files over ``uploaders`` processes.

    A rank's files go to uploader ``rank % uploaders`` (so each rank's shards stream in their
    own process); the checkpoint-wide files (trainer state, config, tokenizer) go, biggest
    first, to whichever uploader has the fewest bytes so far. Empty groups are dropped.
    """
    if uploaders < 1:
        raise ValueError(f"uploaders must be >= 1, got {uploaders}")
    groups: list[list[str]] = [[] for _ in range(uploaders)]
    load = [0] * uploaders
    shared: list[str] = []
    for path in sorted(sizes):
        rank = owner_rank(path)
        if rank is None:
            shared.append(path)
            continue
        groups[rank % uploaders].append(path)
        load[rank % uploaders] += sizes[path]
    for path in sorted(shared, key=lambda p: (-sizes[p], p)):
        i = min(range(uploaders), key=lambda k: (load[k], k))
        groups[i].append(path)
        load[i] += sizes[path]
    return [sorted(g) for g in groups if g]


def bytes_per_rank(entries: Iterable[Any]) -> dict[str, int]:
    """``{"rank-0": bytes, ..., "shared": bytes}`` of a checkpoint's file entries (path, size)."""
    out: dict[str, int] = {}
    for e in entries:
        path, size = (e["path"], e["size"]) if isinstance(e, dict) else (e.path, e.size)
        rank = owner_rank(path)
        key = SHARED if rank is None else f"rank-{rank}"
        out[key] = out.get(key, 0) + int(size)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == SHARED, len(kv[0]), kv[0])))
