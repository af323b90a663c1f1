"""The collective helpers every stage-1 package shares — each a no-op without a process group.

Why one module: every cross-rank decision (save now? stop now? which checkpoint?) must be taken
the same way on every rank at the same point, and the NCCL/gloo device rule (a CUDA tensor under
NCCL, a CPU one under gloo) is easy to get wrong in one copy of five.
"""

from __future__ import annotations

from typing import Any


def _group() -> Any:
    """``torch.distributed`` when a process group exists, else None (a single process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_reduce(value: float | int, dtype: str, op: str) -> float | int:
    import torch

    dist = _group()
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=getattr(torch, dtype), device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.item()


def all_ok(flag: bool) -> bool:
    """All-reduce MIN of a flag: a barrier that also tells every rank whether all succeeded."""
    if _group() is None:
        return flag
    return bool(_all_reduce(1 if flag else 0, "int32", "MIN"))


def any_rank_true(flag: bool) -> bool:
    """All-reduce MAX of a flag, so every rank takes the same decision at the same step."""
    if _group() is None:
        return flag
    return bool(_all_reduce(1 if flag else 0, "int32", "MAX"))


def min_across_ranks(value: int) -> int:
    """All-reduce MIN of an integer (e.g. the checkpoint step every node can resume from)."""
    if _group() is None:
        return value
    return int(_all_reduce(value, "int64", "MIN"))


def earliest_across_ranks(value: float | None) -> float | None:
    """All-reduce MIN of a Unix time (None = unknown on this rank); None if no rank knows one."""
    if _group() is None:
        return value
    out = float(_all_reduce(float("inf") if value is None else value, "float64", "MIN"))
    return None if out == float("inf") else out


def barrier() -> None:
    """Every rank waits here for the others."""
    dist = _group()
    if dist is not None:
        dist.barrier()
