"""The token-shard cache in the store (``<run>/cache/data/``): its parts, markers and manifest.

Layout: ``<fp>/tokenizer/…`` and ``<fp>/…`` shards (``fp`` = the data fingerprint), a marker per
committed shard under ``_parts/<fp>/`` (``u<unit>-<part>.json``), the tokenizer's marker, a
``FAILED`` marker that stops every waiting node, the dedup stage's keys and edges under
``_dedup/<fp>/`` (deleted once committed), ``DATA_REPORT.json`` and ``MANIFEST.json`` written last
by node 0 (every shard, tokenizer file and the report with size and SHA-256; the shard index in
its metadata).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from artifacts.run import Run
from trainer.data.sources import Source
from trainer.data.worker import Unit
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

CACHE_PREFIX = Run.CACHE_DATA
FORMAT = "twostage-token-shards/1"
TOKENIZER_MARKER = "tokenizer.json"
FAILED_MARKER = "FAILED"
POLL_S = 2.0


def read_markers(store: Any, fp: str) -> dict[tuple[int, int], dict[str, Any]]:
    out = {}
    for obj in store.list(f"_parts/{fp}"):
        name = obj.key.rsplit("/", 1)[-1]
        if name.startswith("u") and name.endswith(".json"):
            m = json.loads(store.get_bytes(obj.key))
            out[(int(m["unit"]), int(m["part"]))] = m
    return out


def resume_point(
    markers: dict[tuple[int, int], dict[str, Any]], unit: int
) -> tuple[bool, int, int]:
    """(done, next part, byte offset to skip to) of a unit from its committed markers."""
    parts = sorted(p for (u, p) in markers if u == unit)
    if not parts:
        return False, 0, 0
    last = markers[(unit, parts[-1])]
    return bool(last["done"]), parts[-1] + 1, int(last["end_offset"])


def clean_stale(store: Any, fp: str) -> None:
    """Drop a manifest for other settings first (it must never pair with new shards), then its files."""
    from artifacts.manifest import MANIFEST_NAME

    if store.exists(MANIFEST_NAME):
        store.delete([MANIFEST_NAME])
    stale = [
        o.key
        for o in store.list()
        if not o.key.startswith((f"{fp}/", f"_parts/{fp}/", f"_dedup/{fp}/"))
    ]
    store.delete(stale)
    store.delete([o.key for o in store.list(f"_parts/{fp}") if o.key.endswith(FAILED_MARKER)])


def fail(store: Any, fp: str, message: str, single_node: bool) -> TrainerError:
    """Record the failure for waiting ranks/nodes; on one node also drop this attempt's shards."""
    if single_node:
        store.delete([o.key for o in store.list(fp)])
        store.delete([o.key for o in store.list(f"_parts/{fp}")])
        store.delete([o.key for o in store.list(f"_dedup/{fp}")])
    store.put_bytes(f"_parts/{fp}/{FAILED_MARKER}", message.encode())
    return TrainerError(message)


def wait_for(store: Any, key: str, fp: str, since: float, what: str) -> None:
    """Poll the store until ``key`` exists; a FAILED marker newer than ``since`` stops the wait."""
    while not store.exists(key):
        wait_for_any(store, fp, since, what)


class CommittedMeanwhile(Exception):  # noqa: N818 - a signal, not an error
    """The cache this node waits to help build was committed meanwhile (node 0 finished and
    cleaned up the intermediate markers a late node would otherwise wait for forever)."""


def wait_for_any(store: Any, fp: str, since: float, what: str) -> None:
    """One poll of a wait for ``what``: raise a FAILED marker newer than ``since``, or
    :class:`CommittedMeanwhile` when the manifest for ``fp`` is there; else sleep."""
    for o in store.list(f"_parts/{fp}"):
        if o.key.endswith(FAILED_MARKER) and o.mtime >= since - 5:
            raise TrainerError(store.get_bytes(o.key).decode())
    if committed_metadata(store).get("fingerprint") == fp:
        raise CommittedMeanwhile(fp)
    log.info("data: waiting for %s", what)
    time.sleep(POLL_S)


def committed_metadata(store: Any) -> dict[str, Any]:
    from artifacts.errors import ArtifactError
    from artifacts.manifest import MANIFEST_NAME, Manifest

    if not store.exists(MANIFEST_NAME):
        return {}
    try:
        meta = Manifest.from_json(store.get_bytes(MANIFEST_NAME)).metadata
    except ArtifactError:
        return {}
    return meta if meta.get("format") == FORMAT else {}


def shard_index(
    markers: dict,
    every: list[Unit],
    fp: str,
    dtype: str,
    eos: int,
    vocab: int,
    sources: list[Source],
):
    """Manifest metadata (the shard index, in unit/part order) and file entries."""
    from artifacts.manifest import FileEntry

    train, val, files = [], [], []
    docs = 0
    for u in every:
        for key in sorted(k for k in markers if k[0] == u.index):
            m = markers[key]
            docs += int(m["docs"])
            for split, lst in (("train", train), ("val", val)):
                if m[split]:
                    lst.append([m[split]["path"], int(m[split]["tokens"])])
                    files.append(FileEntry(m[split]["path"], m[split]["size"], m[split]["sha256"]))
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "dtype": dtype,
        "eos_token_id": eos,
        "vocab_size": vocab,
        "docs": docs,
        "train_tokens": sum(t for _, t in train),
        "val_tokens": sum(t for _, t in val),
        "train": train,
        "val": val,
        "sources": [{"name": s.name, "identity": s.identity, "size": s.size} for s in sources],
    }
    return meta, files


def check_size(meta: dict[str, Any], block_size: int, where: str) -> None:
    """At least 4 training blocks and 1 validation block of ``block_size`` (blocks never span shards)."""
    n_train = sum(t // block_size for _, t in meta["train"])
    n_val = sum(t // block_size for _, t in meta["val"])
    if meta["docs"] == 0:
        names = ", ".join(s["name"] for s in meta["sources"][:3])
        raise TrainerError(
            f"{where}: the corpus holds no text ({names}); add text files to data.train_files"
        )
    if n_train < 4 or n_val < 1:
        raise TrainerError(
            f"{where}: corpus too small: {meta['train_tokens']} train / {meta['val_tokens']} validation "
            f"tokens make {n_train} train / {n_val} validation blocks of {block_size} "
            "(need >= 4 and >= 1); add text, lower data.block_size or raise data.val_fraction"
        )
