"""Where this process runs: the launcher's environment, the node layout, the node-local scratch
folder and the run's URI — each rule once, for the rank entry point, ``prepare-data`` and the
launchers alike (they must agree, or a rank and its launcher look in different places)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from artifacts.node import ENV_SCRATCH
from artifacts.ports import free_port
from artifacts.run import Run, default_run_uri
from trainer.config import RunConfig


def run_uri(run_cfg: RunConfig, override: str | None = None) -> str:
    """``--run`` if given, else the recipe's ``[run] uri``, else ``runs/<name>-<time>``."""
    return override or run_cfg.uri or default_run_uri(run_cfg.name)


def ensure_dist_env() -> None:
    """A single process started without a launcher becomes rank 0 of 1 (DeepSpeed would look for MPI)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def node_layout(env: Mapping[str, str], *, world: int, rank: int) -> tuple[int, int]:
    """``(node_rank, num_nodes)`` from the launcher's environment.

    The DeepSpeed launcher sets ``CROSS_RANK``/``CROSS_SIZE``/``LOCAL_SIZE``; torchrun sets
    ``GROUP_RANK``/``LOCAL_WORLD_SIZE``. Ranks are assumed node-major (both launchers do that).
    """
    local = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or world)
    local = max(1, local)
    num_nodes = int(env.get("CROSS_SIZE") or max(1, world // local))
    node_rank = int(env.get("CROSS_RANK") or env.get("GROUP_RANK") or rank // local)
    return node_rank, num_nodes


def scratch_dir(run_cfg: RunConfig, run: Run) -> Path:
    """Node-local working folder of this run (checkpoints before upload, data cache)."""
    base = run_cfg.scratch_dir or os.environ.get(ENV_SCRATCH) or "runs/.scratch"
    tag = hashlib.sha256(run.uri.encode()).hexdigest()[:12]
    return (Path(base).expanduser() / f"{run_cfg.name}-{tag}").absolute()
