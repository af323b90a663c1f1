"""The trainer's side of the data: make sure the shard cache exists (before any collective), then stream it.

``ensure_prepared`` runs on every rank *before* ``torch.distributed`` starts: each node's local
rank 0 prepares that node's share of the sources (:mod:`trainer.prepare`; a no-op when the
committed cache matches; node 0 commits the manifest once every node's shards are in), the other
local ranks wait for it on a node-local file (no collective, so no ``ddp_timeout``). ``open_data`` then gives the tokenizer (downloaded and
checked against the manifest), the train/validation datasets (:mod:`trainer.stream`) and the
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
from trainer.errors import TrainerError
from trainer.prepare import CACHE_PREFIX, EOS_TOKEN, POLL_S, check_size, prepare

__all__ = [
    "CACHE_PREFIX",
    "EOS_TOKEN",
    "StreamData",
    "ensure_prepared",
    "load_tokenizer",
    "open_data",
]

log = logging.getLogger(__name__)


def load_tokenizer(folder: str | Path) -> Any:
    """An HF tokenizer from a local folder (no hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TrainerError(f"cannot load tokenizer from {folder}: {err}") from None


def local_folder(spec: str, workdir: Path, name: str) -> Path:
    """A local folder for ``spec``: itself, or a verified/plain download of a store URI."""
    if "://" not in spec:
        path = Path(spec)
        if not path.is_dir():
            raise TrainerError(f"data.tokenizer {spec}: no such folder")
        return path
    from artifacts.manifest import MANIFEST_NAME
    from artifacts.store import open_store

    dest = workdir / name
    store = open_store(spec)
    if store.exists(MANIFEST_NAME):
        from artifacts.download import download_verified

        download_verified(spec, dest, force=True)
    else:
        objects = store.list()
        if not objects:
            raise TrainerError(f"data.tokenizer {spec}: nothing there")
        for obj in objects:
            store.download_file(obj.key, dest / obj.key)
    return dest


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
    from trainer.stream import GlobalOrder, ShardDataset, ShardIndex, StreamSampler

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
