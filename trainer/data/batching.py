"""The global batch across world sizes: one pure plan, and the sample-order contract it relies on.

A run's optimizer step sees ``per_device × gradient_accumulation × world`` samples. When a run is
resumed on another number of ranks (spot capacity came back smaller), that product is held
constant by choosing a new accumulation (and, if needed, a smaller per-device batch: the recipe's
per-device batch is the memory ceiling, never exceeded). When no exact split exists the run is
refused with one line naming the numbers, unless ``training.allow_global_batch_change = true``.

**Sample-order contract** (the one assumption elastic resume makes about the data pipeline): for
a fixed seed, epoch and global batch ``G``, an epoch is whole optimizer steps and step ``k`` trains
on the samples ``order[k*G:(k+1)*G]`` of one world-size-independent order, whatever
``(per_device, accumulation, world)`` splits ``G``. The streaming sampler
(:class:`trainer.data.stream.StreamSampler` over :class:`~trainer.data.stream.GlobalOrder`)
gives it, with accelerate dealing per-device micro-batches round-robin to ranks;
``tests/trainer/data/test_batching.py`` checks it through accelerate's own data loader. Resume
skips ``step × accumulation`` micro-batches per rank (HF's ``skip_first_batches``), which lands
on the same sample under the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import TrainerError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is split on this launch."""

    per_device: int
    """Micro-batch per rank."""
    grad_accum: int
    """Micro-batches accumulated per optimizer step."""
    world: int
    """Data-parallel ranks."""

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step."""
        return self.per_device * self.grad_accum * self.world

    def describe(self) -> str:
        """``32 (16 per device × 2 accumulation × 1 rank)`` for logs and errors."""
        ranks = "rank" if self.world == 1 else "ranks"
        return (
            f"{self.global_batch} ({self.per_device} per device × {self.grad_accum} "
            f"accumulation × {self.world} {ranks})"
        )


def split_global_batch(global_batch: int, world: int, max_per_device: int) -> BatchPlan | None:
    """The split of ``global_batch`` on ``world`` ranks with the largest per-device batch that
    does not exceed ``max_per_device`` (fewest accumulation steps); None when none is exact."""
    if global_batch < 1 or world < 1 or max_per_device < 1:
        raise ValueError(f"bad batch numbers: {global_batch=}, {world=}, {max_per_device=}")
    if global_batch % world:
        return None
    per_rank = global_batch // world
    for accum in range(1, per_rank + 1):
        if per_rank % accum == 0 and per_rank // accum <= max_per_device:
            return BatchPlan(per_device=per_rank // accum, grad_accum=accum, world=world)
    return None  # unreachable: accum == per_rank gives per_device 1


def plan_batch(
    *,
    per_device: int,
    grad_accum: int,
    world: int,
    checkpoint_global_batch: int | None,
    allow_change: bool,
) -> BatchPlan:
    """The batch split of this launch.

    ``per_device``/``grad_accum`` are the recipe's (the per-device batch is the memory ceiling);
    ``checkpoint_global_batch`` is the global batch the resumed checkpoint was trained with (None
    for a fresh run: the recipe's split as it is). Raises :class:`TrainerError` (one line, the
    numbers and the fix) when the global batch cannot be held and ``allow_change`` is false.
    """
    recipe = BatchPlan(per_device=per_device, grad_accum=grad_accum, world=world)
    if checkpoint_global_batch is None or checkpoint_global_batch == recipe.global_batch:
        return recipe
    plan = split_global_batch(checkpoint_global_batch, world, per_device)
    if plan is not None:
        return plan
    if allow_change:
        return recipe
    why = (
        f"it is not a multiple of {world}"
        if checkpoint_global_batch % world
        else f"no split keeps the per-device batch <= {per_device}"
    )
    raise TrainerError(
        f"the checkpoint was trained with a global batch of {checkpoint_global_batch}, which "
        f"cannot be held on {world} rank(s) ({why}); relaunch on a world size that divides it, "
        f"or set training.allow_global_batch_change = true to continue with "
        f"{recipe.describe()}"
    )


