"""Training reads the committed token shards as a stream: constant memory, bounded local disk.

* :class:`ShardIndex` — the shard list of the manifest; block ``i`` of a split is found by a
  binary search over per-shard block counts (blocks of ``block_size`` never span shards).
* :class:`ShardReader` — reads one block with ``os.pread`` (no mapping, so resident memory does
  not grow with the bytes read). Shards of a local run prefix are read in place; from a remote
  store each is downloaded once into ``<scratch>/shard-cache/``, checked against its SHA-256,
  and the least recently used is deleted beyond ``data.local_cache_shards``.
* :class:`GlobalOrder` — the sample order of an epoch, a pure function of (seed, epoch): a
  seeded permutation of the shards, cut into windows of ``data.shuffle_window`` shards whose
  blocks are permuted together. Its length is a whole number of global batches. Every rank
  computes the same sequence; accelerate deals the per-device batches round-robin, so optimizer
  step ``k`` trains on samples ``[k·G, (k+1)·G)`` for any number of ranks at global batch ``G``.
* Mid-epoch resume: HF ``Trainer`` skips the already-trained batches of the sampler (indices
  only: nothing skipped is read); ``data_position.json`` in every checkpoint records the
  position (epoch, sample, global batch, data fingerprint) and is checked on resume.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

log = logging.getLogger(__name__)

POSITION_FILE = "data_position.json"


@dataclass(frozen=True)
class ShardIndex:
    """One split's shards: relative paths, token counts, and how blocks map onto them."""

    paths: tuple[str, ...]
    tokens: tuple[int, ...]
    block_size: int
    dtype: str

    @property
    def blocks(self) -> list[int]:
        return [t // self.block_size for t in self.tokens]

    def offsets(self) -> Any:
        import numpy as np

        return np.concatenate([[0], np.cumsum(self.blocks, dtype=np.int64)])

    def __len__(self) -> int:
        return int(sum(self.blocks))


class ShardReader:
    """Reads blocks of one split's shards; see the module docstring for the cache rule."""

    def __init__(
        self, cache_uri: str, index: ShardIndex, sha256: dict[str, str], scratch: Path, keep: int
    ) -> None:
        self.cache_uri, self.index, self.sha256 = cache_uri, index, sha256
        self.scratch, self.keep = scratch, keep
        self._offsets = index.offsets()
        self._open: OrderedDict[int, int] = OrderedDict()  # shard -> fd, most recent last
        self._lock = threading.Lock()
        self._width = 2 if index.dtype == "uint16" else 4
        self._local_root = self._local(cache_uri)
        self.downloads = 0

    @staticmethod
    def _local(uri: str) -> Path | None:
        from artifacts.store import LocalStore, open_store

        store = open_store(uri)
        return store.root if isinstance(store, LocalStore) else None

    def _path(self, k: int) -> Path:
        rel = self.index.paths[k]
        if self._local_root is not None:
            return self._local_root / rel
        from artifacts.store import open_store

        dest = self.scratch / "shard-cache" / rel
        if not dest.is_file():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            entry = open_store(self.cache_uri).download_file(rel, tmp)
            if entry.sha256 != self.sha256.get(rel):
                tmp.unlink(missing_ok=True)
                raise TrainerError(
                    f"{self.cache_uri}/{rel}: SHA-256 differs from the manifest; re-run prepare-data"
                )
            tmp.replace(dest)
            self.downloads += 1
        return dest

    def _fd(self, k: int) -> int:
        with self._lock:
            if k in self._open:
                self._open.move_to_end(k)
                return self._open[k]
            path = self._path(k)
            fd = os.open(path, os.O_RDONLY)
            self._open[k] = fd
            while len(self._open) > self.keep:
                old, old_fd = self._open.popitem(last=False)
                os.close(old_fd)
                if (
                    self._local_root is None
                ):  # evict the local copy; an open mapping elsewhere survives
                    (self.scratch / "shard-cache" / self.index.paths[old]).unlink(missing_ok=True)
            return fd

    def block(self, i: int) -> Any:
        """Block ``i`` of the split as an int64 array of ``block_size`` tokens."""
        import numpy as np

        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        j = i - int(self._offsets[k])
        n = self.index.block_size * self._width
        raw = os.pread(self._fd(k), n, j * n)
        return np.frombuffer(raw, dtype=self.index.dtype).astype(np.int64)

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


class ShardDataset:
    """A map-style dataset of causal-LM blocks over one split (picklable: the reader opens lazily)."""

    def __init__(
        self, cache_uri: str, index: ShardIndex, sha256: dict[str, str], scratch: Path, keep: int
    ) -> None:
        self.args = (cache_uri, index, sha256, scratch, keep)
        self.index = index
        self._reader: ShardReader | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "index": self.index, "_reader": None}

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader(*self.args)
        return self._reader

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        ids = torch.from_numpy(self.reader.block(int(i)))
        return {"input_ids": ids, "labels": ids.clone()}


@dataclass(frozen=True)
class GlobalOrder:
    """The epoch's sample order (see the module docstring); memory ~ window × blocks per shard."""

    blocks: tuple[int, ...]
    seed: int
    window: int
    global_batch: int

    def __len__(self) -> int:
        return (sum(self.blocks) // self.global_batch) * self.global_batch

    def iter_epoch(self, epoch: int, start: int = 0):
        """Global block ids of ``epoch`` from position ``start`` (windows before it are not generated)."""
        import numpy as np

        offsets = np.concatenate([[0], np.cumsum(self.blocks, dtype=np.int64)])
        shard_order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        total, pos = len(self), 0
        for w in range(0, len(shard_order), self.window):
            shards = shard_order[w : w + self.window]
            size = int(sum(self.blocks[s] for s in shards))
            if pos + size <= start:
                pos += size
                continue
            ids = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in shards])
            ids = ids[np.random.default_rng([self.seed, epoch, w]).permutation(size)]
            skip = max(0, start - pos)
            pos += skip
            for b in ids[skip:].tolist():
                if pos >= total:
                    return
                yield b
                pos += 1


class StreamSampler:
    """A torch ``Sampler`` over :class:`GlobalOrder`; HF Trainer calls ``set_epoch`` every epoch."""

    def __init__(self, order: GlobalOrder) -> None:
        self.order = order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return self.order.iter_epoch(self.epoch)


def position(global_step: int, order: GlobalOrder, fingerprint: str) -> dict[str, Any]:
    """Where the data stream is after ``global_step`` optimizer steps."""
    steps_per_epoch = max(1, len(order) // order.global_batch)
    return {
        "global_step": global_step,
        "epoch": global_step // steps_per_epoch,
        "sample_in_epoch": (global_step % steps_per_epoch) * order.global_batch,
        "samples_seen": global_step * order.global_batch,
        "global_batch": order.global_batch,
        "seed": order.seed,
        "shuffle_window": order.window,
        "fingerprint": fingerprint,
    }


def check_resume_position(
    folder: Path,
    order: GlobalOrder,
    fingerprint: str,
    global_step: int,
    allow_batch_change: bool = False,
) -> None:
    """A resume continues the saved stream: same data, same order, same global batch; else exit 2.

    ``allow_batch_change`` (``training.allow_global_batch_change``): a different global batch is
    accepted with a warning; the stream then continues at step × the new batch, not exactly.
    """
    path = folder / POSITION_FILE
    if not path.exists():
        log.warning(
            "resume: %s has no %s; the data position is taken from the step count",
            folder,
            POSITION_FILE,
        )
        return
    saved = json.loads(path.read_text())
    now = position(global_step, order, fingerprint)
    for key in ("fingerprint", "global_batch", "seed", "shuffle_window"):
        if key == "global_batch" and allow_batch_change and saved.get(key) != now[key]:
            log.warning(
                "resume: global batch %s -> %s (training.allow_global_batch_change): the data "
                "stream continues at sample %d of epoch %d, not at the saved sample %s",
                saved.get(key), now[key], now["sample_in_epoch"], now["epoch"],
                saved.get("sample_in_epoch"),
            )  # fmt: skip
            continue
        if saved.get(key) != now[key]:
            raise TrainerError(
                f"resume: checkpoint {folder.name} was trained with {key} {saved.get(key)!r}, this launch has "
                f"{now[key]!r}; keep data and batch settings (per-device batch x ranks x accumulation) or start a new run"
            )
    log.info(
        "resume: data stream continues at epoch %d sample %d (global batch %d)",
        now["epoch"], now["sample_in_epoch"], now["global_batch"],
    )  # fmt: skip
