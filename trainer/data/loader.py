"""The trainer's side of the data: make sure the shard cache exists (before any collective), then stream it.

``ensure_prepared`` runs on every rank *before* ``torch.distributed`` starts: each node's local
rank 0 prepares that node's share of the sources (:mod:`trainer.data.prepare`; a no-op when the
committed cache matches; node 0 commits the manifest once every node's shards are in), the other
local ranks wait for it on a node-local file (no collective, so no ``ddp_timeout``). ``open_data`` then gives the tokenizer (downloaded and
checked against the manifest), the train/validation datasets (:mod:`trainer.data.stream`) and the
sampler with the global order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.run import Run
from trainer.config import TrainerConfig
from trainer.data.prepare import prepare
from trainer.data.shards import POLL_S, check_size
from trainer.data.tokenizer import load_tokenizer
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


def ensure_prepared(
    cfg: TrainerConfig,
    run: Run | str,
    scratch: Path,
    *,
    node_rank: int,
    num_nodes: int,
    local_rank: int,
) -> None:
    """Before ``torch.distributed`` starts: local rank 0 prepares this node's share, the others wait.

    The other local ranks wait for a node-local file named after the launcher's pid (all ranks of
    a node are its children), so a file from an earlier launch is never mistaken for this one.
    """
    ready = scratch / f".data-ready-{os.getppid()}.json"
    if local_rank == 0:
        try:
            prepare(
                cfg, run, scratch, node_rank=node_rank, node_count=num_nodes, bar=node_rank == 0
            )
        except BaseException as err:
            _write(
                ready,
                {
                    "error": str(err)
                    if isinstance(err, TrainerError)
                    else f"data preparation failed: {err!r}"
                },
            )
            raise
        _write(ready, {"ok": True})
        return
    while not ready.exists():
        time.sleep(POLL_S / 4)
    doc = json.loads(ready.read_text())
    if "error" in doc:
        raise TrainerError(doc["error"])


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


@dataclass
class StreamData:
    """What the trainer needs: tokenizer, datasets, the sampler of the global order."""

    tokenizer: Any
    train: Any
    val: Any
    sampler: Any
    order: Any
    fingerprint: str


def open_data(
    cfg: TrainerConfig, run: Run | str, scratch: Path, *, global_batch: int
) -> StreamData:
    """Tokenizer + streamed datasets over the committed cache (every rank; reads only the manifest)."""
    from artifacts.manifest import MANIFEST_NAME, Manifest
    from artifacts.store import open_store
    from trainer.data.stream import GlobalOrder, ShardDataset, ShardIndex, StreamSampler

    cache_uri = (Run(run) if isinstance(run, str) else run).cache_data_uri
    store = open_store(cache_uri)
    manifest = Manifest.from_json(
        store.get_bytes(MANIFEST_NAME), source=f"{cache_uri}/{MANIFEST_NAME}"
    )
    meta = manifest.metadata
    check_size(meta, cfg.data.block_size, where=cfg.source or "data")
    sha = {f.path: f.sha256 for f in manifest.files}
    tok_dir = scratch / "data-tokenizer" / meta["fingerprint"]
    for f in manifest.files:
        if f.path.startswith(meta["tokenizer"] + "/"):
            dest = tok_dir / Path(f.path).name
            if not (dest.is_file() and dest.stat().st_size == f.size):
                entry = store.download_file(f.path, dest)
                if entry.sha256 != f.sha256:
                    raise TrainerError(
                        f"{cache_uri}/{f.path}: SHA-256 differs from the manifest; re-run prepare-data"
                    )
    tokenizer = load_tokenizer(tok_dir)

    def split(name: str) -> ShardIndex:
        rows = meta[name]
        return ShardIndex(
            tuple(p for p, _ in rows),
            tuple(int(t) for _, t in rows),
            cfg.data.block_size,
            meta["dtype"],
        )

    keep = cfg.data.local_cache_shards
    train_ix, val_ix = split("train"), split("val")
    train = ShardDataset(cache_uri, train_ix, sha, scratch, keep)
    val = ShardDataset(cache_uri, val_ix, sha, scratch, keep)
    order = GlobalOrder(tuple(train_ix.blocks), cfg.run.seed, cfg.data.shuffle_window, global_batch)
    if len(order) == 0:
        raise TrainerError(
            f"{cfg.source or 'data'}: {len(train_ix)} training blocks are fewer than one global batch "
            f"of {global_batch}; add text or lower the batch size"
        )
    log.info(
        "data: %d train / %d val blocks of %d in %d shards, %d samples per epoch (global batch %d)",
        len(train_ix), len(val_ix), cfg.data.block_size, len(train_ix.paths), len(order), global_batch,
    )  # fmt: skip
    return StreamData(tokenizer, train, val, StreamSampler(order), order, meta["fingerprint"])
