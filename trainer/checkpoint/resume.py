"""Resume: the checkpoint layout in the run prefix, and picking the checkpoint to resume from.

Remote layout: ``<run>/checkpoints/step-<global_step:010d>/`` mirrors the HF checkpoint folder
(``global_step40/zero_pp_rank_0_mp_rank_00_optim_states.pt``, ``trainer_state.json``, ...) plus
``MANIFEST.json`` (the commit). Locally it becomes ``<dest_root>/checkpoint-<step>/``, the folder
``Trainer.train(resume_from_checkpoint=...)`` expects. Only committed folders are candidates;
a candidate that fails verification is skipped, with a warning, in favour of the previous one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from artifacts.download import download_verified
from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import MANIFEST_NAME, Manifest, committed_folders
from artifacts.run import Run, step_of
from artifacts.store import open_store
from artifacts.verify import verify_dir
from trainer.dist import min_across_ranks

log = logging.getLogger(__name__)


def committed_steps(run: Run) -> list[int]:
    """Global steps of the committed checkpoints of a run, oldest first."""
    store = open_store(run.checkpoints_uri)
    steps = (step_of(f) for f in committed_folders(store.list(), ""))
    return [s for s in steps if s is not None]


def _local_copy_matches(dest: Path, remote_manifest: bytes) -> bool:
    """True when ``dest`` already holds this exact committed checkpoint, verified (no download)."""
    try:
        if (dest / MANIFEST_NAME).read_bytes() != remote_manifest:
            return False
        verify_dir(dest)
        return True
    except (OSError, ArtifactError):
        return False


def find_resume_checkpoint(
    run: Run,
    dest_root: Path,
    *,
    public_key: Path | None = None,
    max_step: int | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """Download and verify the newest committed checkpoint of the run; None when there is none.

    Returns ``(dest_root/checkpoint-<step>, manifest metadata)``. A checkpoint that fails
    verification (or whose manifest is unreadable) is logged as a warning and the previous one is
    tried. Network errors are not verification failures: they propagate, so a relaunch retries
    instead of silently going back further than it has to. ``max_step`` ignores newer ones
    (used to make several nodes agree, see :func:`agree_resume_checkpoint`).
    """
    store = open_store(run.checkpoints_uri)
    folders = committed_folders(store.list(), "")
    candidates = [(step_of(f), f) for f in folders]
    candidates = [
        (s, f) for s, f in candidates if s is not None and (max_step is None or s <= max_step)
    ]
    for step, folder in reversed(candidates):
        src = store.child_uri(folder)
        dest = Path(dest_root) / f"checkpoint-{step}"
        try:
            remote_manifest = store.get_bytes(f"{folder}/{MANIFEST_NAME}")
            try:
                Manifest.from_json(remote_manifest, source=f"{src}/{MANIFEST_NAME}")
            except ArtifactError as err:  # bytes arrived fine but do not parse: corrupted
                raise VerificationError(str(err)) from None
            if public_key is None and _local_copy_matches(dest, remote_manifest):
                log.info("resume: local copy of %s already verified at %s", src, dest)
                return dest, dict(Manifest.from_json(remote_manifest).metadata)
            manifest = download_verified(src, dest, public_key=public_key, force=True)
        except VerificationError as err:
            log.warning(
                "resume: checkpoint %s failed verification (%s); falling back to the previous committed checkpoint",
                src,
                err,
            )
            continue
        log.info("resume: from %s (global step %d)", src, step)
        return dest, dict(manifest.metadata)
    if candidates:
        log.warning("resume: no committed checkpoint of %s verified; starting fresh", run)
    return None


def agree_resume_checkpoint(
    run: Run,
    dest_root: Path,
    *,
    local_rank: int | None = None,
    public_key: Path | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """Every rank of every node gets the same checkpoint; one download per node.

    Local rank 0 of each node downloads (``dest_root`` is node-local scratch); the global step is
    agreed with an all-reduce MIN, and a node that picked a newer one (say, the newest failed to
    verify on another node) picks again with ``max_step``. Without an initialised process group
    this is :func:`find_resume_checkpoint`. Call it after the process group exists (after
    ``TrainingArguments`` is built) and before ``Trainer.train``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return find_resume_checkpoint(run, dest_root, public_key=public_key)
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    none = -1
    not_a_downloader = 2**62
    max_step: int | None = None
    result: tuple[Path, dict[str, Any]] | None = None
    while True:
        mine = not_a_downloader
        if local_rank == 0:
            result = find_resume_checkpoint(
                run, dest_root, public_key=public_key, max_step=max_step
            )
            mine = none if result is None else _step_of(result[0])
        agreed = min_across_ranks(mine)
        disagree = min_across_ranks(0 if mine in (agreed, not_a_downloader) else -1) < 0
        if agreed == none:
            return None
        if not disagree:
            break
        max_step = agreed
    dest = Path(dest_root) / f"checkpoint-{agreed}"
    if local_rank == 0 and result is not None:
        return result
    from artifacts.verify import read_manifest

    manifest, _ = read_manifest(dest)
    return dest, dict(manifest.metadata)


def _step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def drop_saves_after(output_dir: Path, step: int) -> list[str]:
    """Delete this node's ``checkpoint-<n>`` folders with ``n > step`` (``step=-1``: all of them).

    Why: they are saves of an earlier attempt on this node that never committed (the store is
    the truth), and the Trainer's rotation (``save_total_limit``) keeps the *highest-numbered*
    folders: left in place, a stale ``checkpoint-10`` makes it delete the ``checkpoint-8`` the
    resumed run has just written, before that save can be committed. Run by local rank 0 after
    the resume step is agreed and before the first save.
    """
    saves = {}
    for folder in Path(output_dir).glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and suffix.isdigit():
            saves[int(suffix)] = folder
    dropped = []
    for n in sorted(s for s in saves if s > step):
        shutil.rmtree(saves[n], ignore_errors=True)
        dropped.append(saves[n].name)
    if dropped:
        log.info("resume: dropped %s from %s (saved after step %d, never committed)",
                 ", ".join(dropped), output_dir, step)  # fmt: skip
    return dropped
