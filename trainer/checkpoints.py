"""Durable checkpoints: background commit to the run's store prefix, resume, and the HF glue.

The pieces live in :mod:`trainer.committer` (upload + multi-node commit + retention) and
:mod:`trainer.resume` (layout, latest verified checkpoint); this module is the one import the
training entry point needs, plus :class:`CommitCallback` (built lazily: it subclasses
transformers' ``TrainerCallback`` and ``import trainer.checkpoints`` must stay cheap).

Usage in the entry point (every rank)::

    committer = CheckpointCommitter(run, node_rank=..., num_nodes=..., keep_last=3)
    trainer.add_callback(CommitCallback(committer, metadata=lambda state: {...}))
    found = agree_resume_checkpoint(run, scratch)   # after the process group exists
    trainer.train(resume_from_checkpoint=str(found[0]) if found else None)
    # CommitCallback.on_train_end has waited for the last commit on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.committer import CheckpointCommitError, CheckpointCommitter, snapshot
from trainer.resume import (
    agree_resume_checkpoint,
    committed_steps,
    find_resume_checkpoint,
)

__all__ = [
    "CheckpointCommitError",
    "CheckpointCommitter",
    "agree_resume_checkpoint",
    "checkpoint_metadata",
    "committed_steps",
    "find_resume_checkpoint",
    "snapshot",
]

log = logging.getLogger(__name__)

Metadata = dict[str, Any] | Callable[[Any], dict[str, Any]] | None


def checkpoint_metadata(state: Any) -> dict[str, Any]:
    """What every checkpoint's manifest says about training, from the HF ``TrainerState``."""
    evals = [
        {"step": e.get("step"), "epoch": e.get("epoch"), "eval_loss": e["eval_loss"]}
        for e in getattr(state, "log_history", []) or []
        if "eval_loss" in e
    ]
    return {
        "global_step": int(state.global_step),
        "epoch": None if state.epoch is None else float(state.epoch),
        "val_losses": evals,
        "best_metric": getattr(state, "best_metric", None),
    }


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _build_commit_callback() -> type:
    from transformers import TrainerCallback

    class CommitCallback(TrainerCallback):
        """HF callback: after each save, local rank 0 of every node submits the checkpoint.

        ``metadata`` (a dict, or a function of the ``TrainerState``) is merged over
        :func:`checkpoint_metadata`; the core adds convergence state and the config hash.
        ``on_train_end`` waits for the last commit and then holds every rank at a barrier, so no
        rank exits (and makes the launcher kill the uploader) before the commit is written.
        """

        def __init__(self, committer: CheckpointCommitter, *, metadata: Metadata = None) -> None:
            self.committer = committer
            self.metadata = metadata

        def _extra(self, state: Any) -> dict[str, Any]:
            if self.metadata is None:
                return {}
            return dict(self.metadata(state) if callable(self.metadata) else self.metadata)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            _barrier()  # every rank has finished writing its shards and RNG state
            if getattr(args, "local_process_index", 0) == 0:
                local_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                meta = {**checkpoint_metadata(state), **self._extra(state)}
                self.committer.submit(local_dir, state.global_step, meta)
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if getattr(args, "local_process_index", 0) == 0:
                self.committer.wait()
            _barrier()
            return control

    CommitCallback.__qualname__ = "CommitCallback"
    return CommitCallback


def __getattr__(name: str) -> Any:
    if name == "CommitCallback":
        cls = _build_commit_callback()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
