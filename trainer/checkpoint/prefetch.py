"""Resume before the collective: local rank 0 of each node fetches, the node's other ranks wait.

Everything that grows with model size — finding, verifying, downloading (:mod:`trainer.checkpoint.fetch`),
preparing a changed world size (:mod:`trainer.checkpoint.reshard`, or the universal fallback of
:mod:`trainer.checkpoint.elastic`) — runs here, before ``torch.distributed`` starts, so no collective
time-out bounds it (like :func:`trainer.data.loader.ensure_prepared`). Afterwards the ranks agree on
the step with one cheap all-reduce (:func:`agree_prefetched`); only if some node's newest copy failed
to verify does the old whole-checkpoint path run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from artifacts.run import Run
from trainer.checkpoint import reshard
from trainer.checkpoint.elastic import WORLD_SIZE_KEY, universal_before_collective
from trainer.checkpoint.fetch import fetch_share, node_ranks

log = logging.getLogger(__name__)


def prefetch_resume(
    run: Run,
    scratch: Path,
    *,
    world: int,
    node_rank: int,
    num_nodes: int,
    local_rank: int,
    timeout_s: float = 6 * 3600.0,
) -> dict[str, Any]:
    """Run :func:`fetch_share` on local rank 0 before ``torch.distributed``; every local rank
    returns the same record: ``{"step": …, "dest": …, "metadata": …, "report": …}`` or
    ``{"step": -1}`` when there is nothing to resume. Other local ranks wait on a node-local
    file named after the launcher's pid (so a file of an earlier launch never counts), for at
    most ``timeout_s`` (their own bound, not the collective's)."""
    ready = scratch / f".resume-ready-{os.getppid()}.json"
    if local_rank == 0:
        try:
            found = fetch_share(
                run, scratch / "resume", world=world,
                ranks=node_ranks(node_rank, num_nodes, world), local_dirs=(scratch / "output",),
                resized_ranks=None if node_rank == 0 else set(),
            )  # fmt: skip
            source = int(found[1].get(WORLD_SIZE_KEY) or world) if found else world
            if found is not None and source != world and found[2].reshard is not None:
                # Another world size: each node reads its new ranks' slices of the old files.
                found[2].reshard.update(reshard.prepare(found[0], old_world=source))
            elif found is not None and source != world:
                # Not covered by the reshard: the head converts, every node loads the universal form.
                found[2].universal = str(universal_before_collective(
                    run, found[0], found[2].step, is_head=node_rank == 0, timeout_s=timeout_s,
                ))  # fmt: skip
        except BaseException as err:
            _write(ready, {"error": f"resume fetch failed: {err!r}"})
            raise
        doc: dict[str, Any] = {"step": -1}
        if found is not None:
            dest, meta, report = found
            doc = {"step": report.step, "dest": str(dest), "metadata": meta,
                   "report": report.to_dict()}  # fmt: skip
        _write(ready, doc)
        return doc
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"local rank 0 did not fetch the resume checkpoint in {timeout_s:.0f} s")
        time.sleep(0.2)
    doc = json.loads(ready.read_text())
    if "error" in doc:
        raise RuntimeError(doc["error"])
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def agree_prefetched(doc: dict[str, Any], fallback: Any) -> tuple[Path, dict[str, Any]] | None:
    """After the process group exists: the step every node prefetched, agreed with one MIN
    all-reduce (cheap). When the nodes disagree (some node's newest copy failed to verify, or
    found none), ``fallback()`` — the whole-checkpoint agreement of
    :func:`trainer.checkpoint.resume.agree_resume_checkpoint` — decides; a rare path, logged."""
    from trainer.dist import min_across_ranks

    mine = int(doc.get("step", -1))
    agreed = min_across_ranks(mine)
    if min_across_ranks(0 if mine == agreed else -1) < 0:
        log.warning("resume: nodes prefetched different steps (this one %d, lowest %d); "
                    "agreeing the slow way", mine, agreed)  # fmt: skip
        return fallback()
    if agreed < 0:
        return None
    return Path(doc["dest"]), dict(doc["metadata"])
