"""The global batch across world sizes (pure plan) and the sample-order contract it relies on."""

from __future__ import annotations

import pytest

from trainer.data.batching import (
    BatchPlan,
    plan_batch,
    split_global_batch,
)
from trainer.data.stream import GlobalOrder, StreamSampler
from trainer.errors import TrainerError


def plan(per_device: int, grad_accum: int, world: int, ckpt: int | None, allow: bool = False):
    return plan_batch(
        per_device=per_device,
        grad_accum=grad_accum,
        world=world,
        checkpoint_global_batch=ckpt,
        allow_change=allow,
    )


def test_a_fresh_run_uses_the_recipe_split() -> None:
    assert plan(16, 1, 2, None) == BatchPlan(16, 1, 2)


@pytest.mark.parametrize(
    ("recipe", "world", "ckpt", "expected"),
    [
        ((16, 1), 1, 32, BatchPlan(16, 2, 1)),  # 2 -> 1: accumulate twice
        ((16, 1), 2, 16, BatchPlan(8, 1, 2)),  # 1 -> 2: half the per-device batch
        ((16, 1), 2, 32, BatchPlan(16, 1, 2)),  # 2 -> 1 -> 2: back to the recipe
        ((32, 8), 6, 2048, None),  # 2048 is not a multiple of 6
        ((32, 8), 16, 2048, BatchPlan(32, 4, 16)),  # 8 p4d nodes -> 2: per-device kept
        ((32, 8), 128, 2048, BatchPlan(16, 1, 128)),  # more ranks than the global batch allows
    ],
)
def test_the_checkpoint_global_batch_is_held(recipe, world, ckpt, expected) -> None:
    if expected is None:
        with pytest.raises(TrainerError):
            plan(*recipe, world, ckpt)
        return
    got = plan(*recipe, world, ckpt)
    assert got == expected and got.global_batch == ckpt
    assert got.per_device <= recipe[0]  # the recipe's per-device batch is the memory ceiling


def test_refusal_is_one_line_naming_the_numbers_and_the_fix() -> None:
    with pytest.raises(TrainerError) as err:
        plan(16, 1, 3, 32)
    msg = str(err.value)
    assert "\n" not in msg
    assert "global batch of 32" in msg and "3 rank(s)" in msg and "not a multiple of 3" in msg
    assert "training.allow_global_batch_change = true" in msg
    assert "48 (16 per device × 1 accumulation × 3 ranks)" in msg


def test_allow_global_batch_change_takes_the_recipe_split() -> None:
    assert plan(16, 1, 3, 32, allow=True) == BatchPlan(16, 1, 3)


def test_split_prefers_the_largest_per_device_batch() -> None:
    assert split_global_batch(64, 2, 16) == BatchPlan(16, 2, 2)
    assert split_global_batch(64, 2, 64) == BatchPlan(32, 1, 2)
    assert split_global_batch(12, 3, 3) == BatchPlan(2, 2, 3)  # 4 per rank, ceiling 3
    assert split_global_batch(10, 4, 8) is None


def test_an_epoch_is_whole_global_batches() -> None:
    assert len(GlobalOrder(BLOCKS, 42, 2, 32)) == 192
    assert len(GlobalOrder(BLOCKS, 42, 2, 16)) == 192  # 203 blocks: the tail is left out


# -- the sample-order contract (what a data pipeline must keep for elastic resume) -------------

BLOCKS = (50, 60, 43, 50)  # blocks per shard: 203 samples


def step_samples(
    *, seed: int, epoch: int, plan: BatchPlan, steps: int, blocks: tuple[int, ...] = BLOCKS
) -> list[list[int]]:
    """Sample ids of the first ``steps`` optimizer steps of ``epoch`` under ``plan``, as the HF
    Trainer + accelerate deal the training sampler's batches to ranks (sorted per step: the order
    inside a step does not change the update). accelerate's real data loader, once per rank."""
    import torch
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    per_rank: list[list[list[int]]] = []
    for rank in range(plan.world):
        sampler = StreamSampler(GlobalOrder(blocks, seed, 2, plan.global_batch))
        loader = DataLoader(
            list(range(sum(blocks))),
            batch_size=plan.per_device,
            sampler=sampler,
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
        sampler.set_epoch(epoch)  # what trainer.loop.hf's _run_epoch does
        batches = [b for _, b in zip(range(steps * plan.grad_accum), prepared, strict=False)]
        per_rank.append(batches)
    out: list[list[int]] = []
    for k in range(steps):
        ids: list[int] = []
        for rank in range(plan.world):
            for batch in per_rank[rank][k * plan.grad_accum : (k + 1) * plan.grad_accum]:
                ids.extend(batch)
        out.append(sorted(ids))
    return out


@pytest.mark.parametrize("epoch", [0, 3])
def test_every_split_of_a_global_batch_trains_the_same_samples_at_every_step(epoch: int) -> None:
    kw = {"seed": 42, "epoch": epoch, "steps": 6}
    reference = step_samples(plan=BatchPlan(16, 1, 2), **kw)
    for other in (BatchPlan(16, 2, 1), BatchPlan(8, 1, 4), BatchPlan(4, 2, 4), BatchPlan(32, 1, 1)):
        assert step_samples(plan=other, **kw) == reference, other
    flat = [i for step in reference for i in step]
    assert len(flat) == len(set(flat)) == 192  # a permutation, whole global batches, no padding


def test_the_order_depends_on_seed_and_epoch() -> None:
    kw = {"plan": BatchPlan(16, 1, 2), "steps": 3}
    base = step_samples(seed=42, epoch=0, **kw)
    assert step_samples(seed=42, epoch=1, **kw) != base
    assert step_samples(seed=7, epoch=0, **kw) != base
    assert step_samples(seed=42, epoch=0, **kw) == base
