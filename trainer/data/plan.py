"""What ``prepare-data`` will do, decided before any read: the cache fingerprint and the units of work.

Pure functions of the sources and the ``[data]`` settings, the same on every node:

- the fingerprint hashes the sources' content identities with every setting that changes the
  tokens, the splits or which documents survive (cleaning and dedup included), so changing any
  of them rebuilds; ``block_size`` is not in it (blocks are cut when training reads);
- a unit is a whole source, a byte range of a big uncompressed local file (about
  ``UNIT_SHARDS`` shards of text), or one of the ``lanes`` (about a shard of text each, at most
  ``MAX_LANES``) of a compressed file or store object, which cannot be cut by bytes: the object
  is downloaded and decompressed once per node into scratch (``reading.fetch_plain``) and each
  lane seeks to the decompressed blocks ``b`` with ``b % lanes == lane``;
- node ``r`` of ``n`` takes the units ``u`` with ``u % n == r``: nodes share big files by byte
  ranges and lanes, not whole files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from trainer.data.config import DataConfig
from trainer.data.dedup import settings as dedup_settings
from trainer.data.shards import FORMAT
from trainer.data.sources import LANE_BLOCK, Source
from trainer.data.worker import Unit

UNIT_SHARDS = 4  # a byte-range unit holds about this many shards of text
MAX_LANES = 16
COMPRESSION_RATIO = 4  # text per stored byte of a .gz/.zst, to size lanes before reading


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
        "clean": asdict(d.clean),
        "dedup": dedup_settings(d.dedup),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def all_units(sources: list[Source], shard_bytes: int) -> list[tuple[int, Unit]]:
    """Every unit of the corpus as (source index, unit), numbered the same way on every node."""
    span = shard_bytes * UNIT_SHARDS
    block = min(LANE_BLOCK, max(4096, shard_bytes // 4))
    units: list[tuple[int, Unit]] = []
    for i, src in enumerate(sources):
        if src.local and not src.compression:
            ranges = [(0, -1)]
            if src.size > span:
                cuts = list(range(0, src.size, span))
                ranges = [
                    (a, b if b < src.size else -1)
                    for a, b in zip(cuts, cuts[1:] + [src.size], strict=True)
                ]
            units += [
                (i, Unit(len(units) + k, src, a, b, source_index=i))
                for k, (a, b) in enumerate(ranges)
            ]
            continue
        text = src.size * (COMPRESSION_RATIO if src.compression else 1)
        lanes = max(1, min(MAX_LANES, -(-text // shard_bytes)))  # ~1 shard each: workers stay balanced
        units += [
            (i, Unit(len(units) + k, src, source_index=i, lanes=lanes, lane=k, lane_block=block))
            for k in range(lanes)
        ]
    return units


def plan_units(
    sources: list[Source], shard_bytes: int, node_rank: int, node_count: int
) -> list[Unit]:
    """This node's units: those ``u`` with ``u % node_count == node_rank``."""
    return [u for _, u in all_units(sources, shard_bytes) if u.index % node_count == node_rank]
