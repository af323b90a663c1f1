"""The global batch across world sizes: one pure plan, and the sample-order contract it relies on.

A run's optimizer step sees ``per_device × gradient_accumulation × world`` samples. When a run is
resumed on another number of ranks (spot capacity came back smaller), that product is held
constant by choosing a new accumulation (and, if needed, a smaller per-device batch: the recipe's
per-device batch is the memory ceiling, never exceeded). When no exact split exists the run is
refused with one line naming the numbers, unless ``training.allow_global_batch_change = true``.

**Sample-order contract** (the one assumption elastic resume makes about the data pipeline,
kept here so another pipeline can plug in): for a fixed seed, epoch and global batch ``G``, an
epoch is ``N // G`` full optimizer steps and step ``k`` trains on the samples
``order[k*G:(k+1)*G]`` of one world-size-independent permutation ``order``, whatever
``(per_device, accumulation, world)`` splits ``G``. Today's map-style dataset gets this from the
HF Trainer + accelerate: a ``SeedableRandomSampler`` seeded with ``data_seed + epoch`` (same
permutation on every rank and world size), micro-batches of ``per_device`` dealt round-robin to
ranks (``BatchSamplerShard``), each rank taking ``accumulation`` micro-batches per step, so step
``k`` covers global micro-batches ``[k*A*W, (k+1)*A*W)``. The one thing the stock Trainer gets
wrong is the epoch's tail (a last partial step on one rank, duplicated padding samples on
several): :func:`train_sampler` draws ``(N // G) * G`` samples per epoch instead (the left-out
tail changes every epoch, so nothing is left out for good), installed by
:func:`elastic_trainer_class`. :func:`step_samples` computes the order with accelerate's own
classes and ``tests/trainer/test_batching.py`` checks the contract; a streaming pipeline must
satisfy the same test. Resume skips ``step × accumulation`` micro-batches per rank (HF's
``skip_first_batches``), which lands on the same sample under the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def epoch_samples(dataset_len: int, global_batch: int) -> int:
    """Samples drawn per epoch: whole global batches only (all of them when fewer than one)."""
    return (dataset_len // global_batch) * global_batch or dataset_len


def train_sampler(dataset: Any, global_batch: int) -> Any:
    """The training sampler of the contract: a random permutation cut to whole global batches.

    accelerate turns it into its ``SeedableRandomSampler`` (``data_seed + epoch``), keeping the
    sample count.
    """
    from torch.utils.data import RandomSampler

    return RandomSampler(dataset, num_samples=epoch_samples(len(dataset), global_batch))


def elastic_trainer_class(global_batch: int, base: type | None = None) -> type:
    """``base`` (default ``transformers.Trainer``) with :func:`train_sampler` (the only change):
    every world size splitting ``global_batch`` trains the same samples at every step, the
    epoch's tail too."""
    if base is None:
        from transformers import Trainer as base

    class ElasticTrainer(base):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return train_sampler(dataset, global_batch)

    return ElasticTrainer


def step_samples(
    *,
    dataset_len: int,
    seed: int,
    epoch: int,
    plan: BatchPlan,
    steps: int,
) -> list[list[int]]:
    """Sample indices of the first ``steps`` optimizer steps of ``epoch`` under ``plan``, as the
    HF Trainer + accelerate deal them (sorted per step: the order inside a step does not change
    the update). Builds accelerate's real data loader once per rank; for tests and checks."""
    import torch
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    per_rank: list[list[list[int]]] = []
    for rank in range(plan.world):
        loader = DataLoader(
            _Indices(dataset_len),
            batch_size=plan.per_device,
            sampler=train_sampler(_Indices(dataset_len), plan.global_batch),
            collate_fn=lambda b: [int(x) for x in b],
        )
        prepared = prepare_data_loader(
            loader,
            num_processes=plan.world,
            process_index=rank,
            put_on_device=False,
            use_seedable_sampler=True,
            data_seed=seed,
            device=torch.device("cpu"),
        )
        prepared.set_epoch(epoch)
        batches: list[list[int]] = []
        for i, batch in enumerate(prepared):
            if i >= steps * plan.grad_accum:
                break
            batches.append(batch)
        per_rank.append(batches)
    out: list[list[int]] = []
    for k in range(steps):
        ids: list[int] = []
        for rank in range(plan.world):
            for batch in per_rank[rank][k * plan.grad_accum : (k + 1) * plan.grad_accum]:
                ids.extend(batch)
        out.append(sorted(ids))
    return out


class _Indices:
    """A map-style dataset whose items are their own indices."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return i
