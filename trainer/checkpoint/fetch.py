"""Resume before the collective: each node fetches only its own ranks' share of the checkpoint.

Why: a committed ZeRO-3 checkpoint is 12 B/param of optimizer shards (7B: 84 GB), one file per
rank. At the same world size a rank loads only its own files (DeepSpeed reads
``zero_pp_rank_<r>_…`` for ``r`` = its data-parallel rank; the HF Trainer ``rng_state_<r>.pth``),
so a node needs its own ranks' files plus the small shared ones (trainer state, scheduler,
config, convergence state) — ``1/N`` of the bytes on ``N`` nodes. A node that still holds the
committed step (a survivor: its own save in ``output/checkpoint-<step>`` or an earlier fetch)
re-uses every file whose SHA-256 matches the manifest and downloads nothing. All of it runs
before ``torch.distributed`` starts (:mod:`trainer.checkpoint.prefetch`: local rank 0 fetches,
the other local ranks wait on a node-local file), so no collective time-out bounds the
transfer. At another world size a node fetches the shared files, old rank 0's small
``model_states`` (the flat layout) and then only the old optimizer files its new ranks read
(:mod:`trainer.checkpoint.reshard`: about ``W/W'`` files per new rank); a checkpoint that reader
does not cover falls back to the universal conversion of :mod:`trainer.checkpoint.elastic`
(every file on the head node).
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import MANIFEST_NAME, FileEntry, Manifest, committed_folders
from artifacts.run import Run, step_of
from artifacts.store import open_store
from trainer.checkpoint import reshard
from trainer.checkpoint.elastic import (
    WORLD_SIZE_KEY,
    facts_from_manifest,
)

log = logging.getLogger(__name__)

#: A file that belongs to one data-parallel rank: ZeRO optimizer / model states, HF RNG state.
_RANK_FILE = re.compile(
    r"(?:^|/)(?:(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(optim|model)_states\.pt"
    r"|rng_state_(\d+)\.pth)$"
)
#: Parallel downloads per node (each a ranged multipart transfer of its own).
DEFAULT_WORKERS = 8
_CHUNK = 8 << 20


def rank_of(path: str) -> int | None:
    """The rank a checkpoint file belongs to, or None for a file every rank needs."""
    return rank_kind(path)[0]


def rank_kind(path: str) -> tuple[int | None, str | None]:
    """``(rank, "optim" | "model" | "rng")`` of a per-rank checkpoint file; ``(None, None)``
    for a file every rank needs."""
    m = _RANK_FILE.search(path)
    if m is None:
        return None, None
    if m.group(1) is not None:
        return int(m.group(1)), m.group(2)
    return int(m.group(3)), "rng"


def share(files: list[FileEntry] | tuple[FileEntry, ...], ranks: set[int] | None) -> list[FileEntry]:
    """The files a node with ``ranks`` needs (``None``: every file)."""
    return [f for f in files if ranks is None or (r := rank_of(f.path)) is None or r in ranks]


def node_ranks(node: int, nodes: int, world: int) -> set[int]:
    """Global ranks of ``node`` (ranks are node-major under both launchers)."""
    per = max(1, world // max(1, nodes))
    return set(range(node * per, min(world, (node + 1) * per)))


@dataclass
class FetchReport:
    """What one node moved for a resume (logged; `invoke status` shows it under ``resumed``)."""

    step: int
    ranks: list[int] | None
    files: int
    share_bytes: int
    """Bytes this node needs (its ranks' files + the shared ones)."""
    total_bytes: int
    """Bytes of the whole checkpoint."""
    downloaded_bytes: int = 0
    reused_bytes: int = 0
    seconds: float = 0.0
    universal: str | None = None
    """The converted (universal) folder, at another world size (the fallback path)."""
    reshard: dict[str, Any] | None = None
    """At another world size: the old world, the old ranks this node fetched (resharding load)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _local_match(entry: FileEntry, places: list[Path]) -> Path | None:
    """A local file with the manifest's size and SHA-256, in any of ``places``."""
    for base in places:
        p = base / entry.path
        try:
            if p.is_file() and p.stat().st_size == entry.size and _sha256(p) == entry.sha256:
                return p
        except OSError:
            continue
    return None


def _place(src: Path, dest: Path) -> None:
    if src == dest:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".reuse")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    tmp.replace(dest)


def fetch_share(
    run: Run,
    dest_root: Path,
    *,
    world: int,
    ranks: set[int],
    local_dirs: tuple[Path, ...] = (),
    max_step: int | None = None,
    workers: int = DEFAULT_WORKERS,
    resized_ranks: set[int] | None = None,
) -> tuple[Path, dict[str, Any], FetchReport] | None:
    """Fetch this node's share of the newest committed checkpoint that verifies; None if none.

    ``ranks``: this node's global ranks (used when the checkpoint was written at ``world``
    ranks; otherwise ``resized_ranks``: None = every file, for the node that converts; an empty
    set = only the shared files, for nodes that load the converted form). ``local_dirs``: other folders that may hold the
    step's files (the trainer's own ``output/checkpoint-<step>``). A file whose bytes do not
    match the manifest fails that checkpoint (the previous one is tried); network errors
    propagate (a relaunch retries rather than going back further than it must).
    """
    store = open_store(run.checkpoints_uri)
    candidates = [(step_of(f), f) for f in committed_folders(store.list(), "")]
    candidates = [(s, f) for s, f in candidates if s is not None and (max_step is None or s <= max_step)]
    for step, folder in reversed(candidates):
        src = store.child_uri(folder)
        dest = Path(dest_root) / f"checkpoint-{step}"
        try:
            raw = store.get_bytes(f"{folder}/{MANIFEST_NAME}")
            try:
                manifest = Manifest.from_json(raw, source=f"{src}/{MANIFEST_NAME}")
            except ArtifactError as err:
                raise VerificationError(str(err)) from None
            facts = facts_from_manifest(step, manifest)
            places = [dest, *(Path(d) / f"checkpoint-{step}" for d in local_dirs)]
            if facts.world_size in (None, world):
                report = _fetch_files(open_store(src), manifest, dest,
                                      share(manifest.files, ranks), places, workers)  # fmt: skip
                report.ranks = sorted(ranks)
            else:
                report = _fetch_resized(open_store(src), manifest, dest, places, workers,
                                        old_world=facts.world_size, ranks=ranks, world=world,
                                        convert=resized_ranks)  # fmt: skip
        except VerificationError as err:
            log.warning("resume: checkpoint %s failed verification (%s); trying the previous one",
                        src, err)  # fmt: skip
            continue
        (dest / MANIFEST_NAME).write_bytes(raw)  # last: the share is complete and verified
        report.step = step
        log.info(
            "resume: from %s (global step %d): this node's share %.2f GB of %.2f GB (ranks %s): "
            "downloaded %.2f GB, re-used %.2f GB local, in %.1f s",
            src, step, report.share_bytes / 1e9, report.total_bytes / 1e9,
            "all" if report.ranks is None else
            (f"{min(report.ranks)}-{max(report.ranks)}" if report.ranks else "none: shared files"),
            report.downloaded_bytes / 1e9, report.reused_bytes / 1e9, report.seconds,
        )  # fmt: skip
        meta = dict(manifest.metadata)
        if facts.world_size and not meta.get(WORLD_SIZE_KEY):  # a share cannot be counted later
            meta[WORLD_SIZE_KEY] = facts.world_size
        return dest, meta, report
    if candidates:
        log.warning("resume: no committed checkpoint of %s verified; starting fresh", run)
    return None


def _fetch_resized(
    src: Any, manifest: Manifest, dest: Path, places: list[Path], workers: int, *,
    old_world: int, ranks: set[int], world: int, convert: set[int] | None,
) -> FetchReport:  # fmt: skip
    """A checkpoint of ``old_world`` ranks for this node's ``ranks`` of ``world``: the shared
    files and old rank 0's ``model_states`` first, then the old optimizer files the resharding
    load reads and the RNG files :func:`~trainer.checkpoint.elastic.adapt_rng_files` maps.
    Not ZeRO-3: the universal fallback's files (``convert``: None = all, for the head)."""
    first = [f for f in manifest.files
             if (k := rank_kind(f.path))[0] is None or k == (0, "model")]  # fmt: skip
    report = _fetch_files(src, manifest, dest, first, places, workers)
    shapes = None
    if reshard.is_zero3(dest):
        try:
            shapes = reshard.param_shapes(dest / reshard.tag_of(dest) / reshard.MODEL_STATES_0)
        except Exception as err:  # verified bytes, but not a layout this reader knows
            log.warning("resume: cannot reshard %s (%s); using the universal conversion", dest, err)
    if shapes is None:
        rest = [f for f in share(manifest.files, convert) if f not in first]
        more = _fetch_files(src, manifest, dest, rest, places, workers)
        report.ranks = None if convert is None else sorted(convert)
    else:
        old = reshard.old_ranks_needed(shapes, old_world, ranks, world)
        rng = {r % old_world for r in ranks}
        rest = [f for f in manifest.files
                if (k := rank_kind(f.path)) in {(r, "optim") for r in old}
                or k in {(r, "rng") for r in rng}]  # fmt: skip
        more = _fetch_files(src, manifest, dest, rest, places, workers)
        report.ranks = sorted(ranks)
        optim = [f.size for f in manifest.files if rank_kind(f.path)[1] == "optim"]
        report.reshard = {
            "old_world": old_world, "old_ranks": sorted(old),
            "optim_bytes": sum(f.size for f in rest if rank_kind(f.path)[1] == "optim"),
            # this node's fair share of the optimizer state: its ranks' fraction of the whole
            "fair_share_bytes": round(sum(optim) * len(ranks) / world),
        }  # fmt: skip
    report.files += more.files
    report.share_bytes += more.share_bytes
    report.downloaded_bytes += more.downloaded_bytes
    report.reused_bytes += more.reused_bytes
    report.seconds = round(report.seconds + more.seconds, 3)
    return report


def _fetch_files(
    src: Any,
    manifest: Manifest,
    dest: Path,
    need: list[FileEntry],
    places: list[Path],
    workers: int,
) -> FetchReport:
    started = time.monotonic()
    report = FetchReport(
        step=0, ranks=None, files=len(need),
        share_bytes=sum(f.size for f in need), total_bytes=manifest.total_bytes,
    )  # fmt: skip
    (dest / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete until written again
    missing: list[FileEntry] = []
    for entry in need:
        found = _local_match(entry, places)
        if found is None:
            missing.append(entry)
        else:
            _place(found, dest / entry.path)
            report.reused_bytes += entry.size

    def get(entry: FileEntry) -> int:
        part = dest / (entry.path + ".part")
        got = src.download_file(entry.path, part)  # hashed while it streams
        if got.size != entry.size or got.sha256 != entry.sha256:
            part.unlink(missing_ok=True)
            raise VerificationError(f"{entry.path}: size or SHA-256 differs from the manifest")
        part.replace(dest / entry.path)
        return got.size

    if missing:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            report.downloaded_bytes = sum(pool.map(get, missing))
    report.seconds = round(time.monotonic() - started, 3)
    return report
