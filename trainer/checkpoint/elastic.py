"""Resume at another data-parallel size: facts of the newest checkpoint, universal conversion.

DeepSpeed refuses to load ZeRO optimizer shards written by another number of ranks
(``ZeRORuntimeException``, "Automatic adjustment … not supported"), and the HF Trainer does not
convert by itself (DeepSpeed issue #5405). This module wires DeepSpeed's universal
checkpointing into our resume path:

1. :func:`newest_checkpoint_facts` reads only the newest committed ``MANIFEST.json`` (no
   download): its step, the world size that wrote it (counted from the ZeRO shard files it
   lists) and its batch split. The launcher and every rank use it before any start-up cost,
   to plan the batch (:mod:`trainer.data.batching`) and refuse early.
2. After the ranks agree on a checkpoint written at another world size, the head node converts
   it once with ``deepspeed.checkpoint.ds_to_universal`` (:func:`to_universal`) into a complete
   HF checkpoint folder whose ``global_step<N>_universal/`` holds per-parameter fp32 weights and
   Adam moments, and commits it beside the original (``<run>/universal/step-<N>/``, manifest
   last, like every folder). Later launches, and other nodes, download that instead of
   converting again.
3. The DeepSpeed config gets ``"checkpoint": {"load_universal": true}`` for that launch
   (:func:`enable_universal_load`); ``Trainer.train(resume_from_checkpoint=…)`` then restores
   weights, optimizer moments and step, LR schedule (in the model-states file), trainer state
   (data position) and the convergence file as usual. RNG files are mapped to the new ranks
   (:func:`adapt_rng_files`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.errors import ArtifactError
from artifacts.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, committed_folders
from artifacts.run import Run, step_folder, step_of
from artifacts.store import open_store
from trainer.checkpoint.reshard import UNIVERSAL_TAG as _UNIVERSAL_TAG
from trainer.checkpoint.reshard import tag_of
from trainer.checkpoint.resume import committed_steps

log = logging.getLogger(__name__)

#: Manifest metadata keys every checkpoint carries about how it was trained.
WORLD_SIZE_KEY = "world_size"
PER_DEVICE_KEY = "per_device_train_batch_size"
GRAD_ACCUM_KEY = "gradient_accumulation_steps"
GLOBAL_BATCH_KEY = "global_batch"
#: ZeRO optimizer shard of data-parallel rank R (stage 2: ``…optim_states.pt`` too; bf16 prefix).
_SHARD = re.compile(r"^global_step\d+/(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


@dataclass(frozen=True)
class CheckpointFacts:
    """What a committed checkpoint's manifest says about the layout that wrote it."""

    step: int
    """Global step."""
    world_size: int | None
    """Data-parallel ranks that wrote it (None: no ZeRO shards listed)."""
    global_batch: int | None
    """Samples per optimizer step it was trained with (None: not recorded)."""


def facts_from_manifest(step: int, manifest: Manifest) -> CheckpointFacts:
    """:class:`CheckpointFacts` from a checkpoint manifest (files listed and metadata)."""
    ranks = {int(m.group(1)) for f in manifest.files if (m := _SHARD.match(f.path))}
    meta = manifest.metadata
    world = int(meta[WORLD_SIZE_KEY]) if meta.get(WORLD_SIZE_KEY) else (len(ranks) or None)
    batch = meta.get(GLOBAL_BATCH_KEY)
    return CheckpointFacts(step=step, world_size=world, global_batch=int(batch) if batch else None)


def shard_world_size(folder: Path) -> int | None:
    """Data-parallel ranks that wrote a local checkpoint folder, from its ZeRO shard files."""
    folder = Path(folder)
    ranks = {
        int(m.group(1))
        for p in folder.glob("global_step*/*optim_states.pt")
        if (m := _SHARD.match(p.relative_to(folder).as_posix()))
    }
    return len(ranks) or None


def newest_checkpoint_facts(run: Run) -> CheckpointFacts | None:
    """Facts of the newest committed checkpoint of the run (one small read), None if none.

    An unreadable newest manifest gives None here: resume will fall back past it anyway, and
    the batch plan is then checked again on the checkpoint the ranks agree on.
    """
    store = open_store(run.checkpoints_uri)
    folders = [f for f in committed_folders(store.list(), "") if step_of(f) is not None]
    if not folders:
        return None
    folder = folders[-1]
    try:
        manifest = Manifest.from_json(store.get_bytes(f"{folder}/{MANIFEST_NAME}"))
    except ArtifactError as err:
        log.warning("cannot read the manifest of %s/%s: %s", store.uri, folder, err)
        return None
    return facts_from_manifest(int(step_of(folder) or 0), manifest)


def plan_launch(cfg: Any, run: Run, world: int) -> tuple[Any, CheckpointFacts | None]:
    """``(BatchPlan, facts of the newest checkpoint)`` for a launch of ``world`` ranks.

    Raises :class:`~trainer.errors.TrainerError` when the checkpoint's global batch cannot be
    held on ``world`` ranks (see :func:`trainer.data.batching.plan_batch`). Cheap (one listing, one
    manifest read): the launcher calls it before starting any rank, every rank before its
    model is built.
    """
    from trainer.data.batching import plan_batch

    facts = newest_checkpoint_facts(run)
    plan = plan_batch(
        per_device=cfg.training.per_device_train_batch_size,
        grad_accum=cfg.training.gradient_accumulation_steps,
        world=world,
        checkpoint_global_batch=facts.global_batch if facts else None,
        allow_change=cfg.training.allow_global_batch_change,
    )
    return plan, facts


def elastic_metadata(*, world: int, per_device: int, grad_accum: int) -> dict[str, Any]:
    """Manifest metadata of a checkpoint saved on this launch (read by :func:`facts_from_manifest`)."""
    return {
        WORLD_SIZE_KEY: world,
        PER_DEVICE_KEY: per_device,
        GRAD_ACCUM_KEY: grad_accum,
        GLOBAL_BATCH_KEY: per_device * grad_accum * world,
    }


def universal_uri(run: Run, step: int) -> str:
    """``<run>/universal/step-<N>``: where the converted form of checkpoint N is committed."""
    return run.child_uri(run.universal_checkpoint(step))


def enable_universal_load(ds_config: dict[str, Any]) -> None:
    """Make DeepSpeed load the universal form (``checkpoint.load_universal``), in place."""
    ds_config.setdefault("checkpoint", {})["load_universal"] = True


def to_universal(src: Path, dest: Path, *, workers: int = 1) -> Path:
    """Convert the HF+DeepSpeed checkpoint folder ``src`` into a universal one at ``dest``.

    ``dest`` gets every HF file of ``src`` (trainer state, RNG, convergence, weights; hard links)
    except the per-rank ZeRO shards, plus ``global_step<N>_universal/`` from DeepSpeed's
    ``ds_to_universal`` and the ``latest_universal`` tag DeepSpeed's loader reads. Built in a
    temporary sibling and renamed into place, so a crash leaves no half folder.
    """
    from argparse import Namespace

    from deepspeed.checkpoint import ds_to_universal

    src, dest = Path(src), Path(dest)
    tag = tag_of(src)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.name in (tag, "latest") or item.is_dir():
            continue
        try:
            os.link(item, tmp / item.name)
        except OSError:
            shutil.copy2(item, tmp / item.name)
    started = time.monotonic()
    out = io.StringIO()  # ds_to_universal prints its progress; keep it for the debug log
    args = Namespace(
        input_folder=str(src / tag),
        output_folder=str(tmp / f"{tag}_universal"),
        num_extract_workers=workers,
        num_merge_workers=workers,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    with contextlib.redirect_stdout(out):
        ds_to_universal.main(args)
    log.debug("ds_to_universal: %s", out.getvalue())
    if (tmp / _UNIVERSAL_TAG).read_text().strip() != f"{tag}_universal":
        raise ArtifactError(f"ds_to_universal did not tag {tag}_universal in {tmp}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(p.stat().st_size for p in (dest / f"{tag}_universal").rglob("*") if p.is_file())
    log.info(
        "converted %s to a universal checkpoint (%.1f MB) in %.1fs",
        src.name,
        size / 1e6,
        time.monotonic() - started,
    )
    return dest


def is_universal(folder: Path) -> bool:
    """Whether ``folder`` is a universal checkpoint folder (made by :func:`to_universal`)."""
    return (Path(folder) / _UNIVERSAL_TAG).exists()


def fetch_or_convert(
    run: Run,
    resumed: Path,
    step: int,
    *,
    is_head: bool,
    local_rank: int,
    barrier: Any,
) -> Path:
    """Every rank: the local universal folder for checkpoint ``step`` (``resumed`` is its original).

    The head node's local rank 0 downloads the committed universal form if there is one, else
    converts and commits it (done once per checkpoint, for every later launch); after a barrier
    the other nodes' local rank 0 download it. Returns ``<resumed>.universal``.
    """
    from artifacts.download import download_verified
    from artifacts.publish import publish_dir

    dest = resumed.with_name(resumed.name + ".universal")
    uri = universal_uri(run, step)
    if is_head and local_rank == 0:
        if open_store(uri).exists(MANIFEST_NAME):
            log.info("resume: the universal form of step %d is committed at %s", step, uri)
            download_verified(uri, dest, force=True)
        else:
            to_universal(resumed, dest)
            publish_dir(
                dest, uri, metadata={"global_step": step, "universal": True}, overwrite=True
            )
            prune_universal(run)
    barrier()
    if not is_head and local_rank == 0:
        download_verified(uri, dest, force=True)
    barrier()
    if not is_universal(dest):
        raise ArtifactError(f"{uri}: not a universal checkpoint (no {_UNIVERSAL_TAG})")
    return dest


#: ``ds_to_universal`` processes (extract and merge): DeepSpeed's defaults are 4 and 2; one per
#: core up to 8 here, since the conversion runs before the collective with the node to itself.
CONVERT_WORKERS = max(1, min(8, os.cpu_count() or 1))


def universal_before_collective(
    run: Run, resumed: Path, step: int, *, is_head: bool, timeout_s: float,
    poll_s: float = 5.0, sleep: Any = time.sleep,
) -> Path:  # fmt: skip
    """:func:`fetch_or_convert` without a collective: called by each node's local rank 0 before
    ``torch.distributed`` starts. The head converts with every worker (or downloads the committed
    universal form) and commits it; the other nodes wait for that commit in the store, bounded by
    their own ``timeout_s`` (not the collective's), then download it."""
    from artifacts.download import download_verified
    from artifacts.publish import publish_dir

    dest = resumed.with_name(resumed.name + ".universal")
    uri = universal_uri(run, step)
    store = open_store(uri)
    if is_head and not store.exists(MANIFEST_NAME):
        started = time.monotonic()
        to_universal(resumed, dest, workers=CONVERT_WORKERS)
        publish_dir(dest, uri, metadata={"global_step": step, "universal": True}, overwrite=True)
        prune_universal(run)
        log.info("resume: step %d converted to universal and committed in %.1f s (%d workers)",
                 step, time.monotonic() - started, CONVERT_WORKERS)  # fmt: skip
    else:
        deadline = time.monotonic() + timeout_s
        while not store.exists(MANIFEST_NAME):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{uri}: not committed by the head within {timeout_s:.0f} s")
            sleep(poll_s)
        download_verified(uri, dest, force=True)
    if not is_universal(dest):
        raise ArtifactError(f"{uri}: not a universal checkpoint (no {_UNIVERSAL_TAG})")
    return dest


def prune_universal(run: Run) -> list[str]:
    """Remove universal forms of checkpoints that are no longer committed (retention pruned them)."""
    live = {step_folder(s) for s in committed_steps(run)}
    store = run.store
    base = run.UNIVERSAL
    gone = []
    for folder in committed_folders(store.list(base), base):
        if folder.rsplit("/", 1)[-1] not in live:
            store.delete(
                [f"{folder}/{MANIFEST_NAME}", f"{folder}/{SIGNATURE_NAME}"]
            )  # commit first
            store.delete_prefix(folder)
            gone.append(folder)
    return gone


def adapt_rng_files(folder: Path, *, rank: int, world: int, source_world: int) -> None:
    """Give this rank the RNG file name the HF Trainer looks for, from the old ranks' files.

    HF saves ``rng_state.pth`` on one process and ``rng_state_<rank>.pth`` on several; rank R of
    the new world takes old rank ``R mod source_world``'s state. Each rank writes only its own
    name (ranks of a node share the folder), and never replaces an existing file.
    """
    folder = Path(folder)

    def name(r: int, w: int) -> str:
        return "rng_state.pth" if w == 1 else f"rng_state_{r}.pth"

    want = folder / name(rank, world)
    have = folder / name(rank % source_world, source_world)
    if want.exists() or not have.exists():
        return
    shutil.copy2(have, want)
