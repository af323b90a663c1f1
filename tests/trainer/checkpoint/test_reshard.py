"""The resharding load reads, for each new rank, exactly its partition out of the old rank files.

Synthetic ZeRO-3 checkpoints in DeepSpeed's own layout (``optimizer_state_dict.fp32_flat_groups``
and Adam ``state[group]`` flattened per sub-group, ``ceil(n/W)`` elements per parameter per rank,
``param_shapes`` in old rank 0's ``model_states``) are built from known full tensors, so every new
rank's partition can be checked against the truth: the full tensor, zero-padded, narrowed — what
DeepSpeed's universal load computes from a ``ds_to_universal`` folder. The real-engine comparison
with ``ds_to_universal`` is ``test_reshard_engine.py``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from artifacts.publish import publish_dir
from artifacts.run import step_folder
from trainer.checkpoint import reshard
from trainer.checkpoint.fetch import fetch_share, rank_kind

KEYS = reshard.KEYS
# Two sub-groups; sizes that divide, that do not, and smaller than the world (padding-only ranks).
SHAPES = [
    OrderedDict(wte=(13, 8), h0=(8, 8), bias=(3,)),
    OrderedDict(h1=(8, 24), ln=(8,), one=(1,)),
]


def full_tensors(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: {k: torch.randn(math.prod(shape), generator=g) for k in KEYS}
        for group in SHAPES
        for name, shape in group.items()
    }


def partition_of(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    part = math.ceil(full.numel() / world)
    padded = torch.cat([full, torch.zeros(part * world - full.numel())])
    return padded.narrow(0, rank * part, part)


def write_checkpoint(folder: Path, step: int, world: int, full: dict) -> Path:
    """An HF + DeepSpeed ZeRO-3 checkpoint folder of ``world`` ranks holding ``full``."""
    tag = folder / f"global_step{step}"
    tag.mkdir(parents=True)
    (folder / "latest").write_text(f"global_step{step}")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    shapes = [OrderedDict((n, torch.Size(s)) for n, s in g.items()) for g in SHAPES]
    for r in range(world):
        flats = {
            k: [torch.cat([partition_of(full[n][k], r, world) for n in g]) for g in SHAPES]
            for k in KEYS
        }
        optim = {
            "zero_stage": 3, "loss_scaler": "scaler", "dynamic_loss_scale": False,
            "overflow": False, "partition_count": world,
            "fp32_flat_groups": flats["fp32"],
            "optimizer_state_dict": {
                "state": {i: {"step": torch.tensor(float(step)), "exp_avg": flats["exp_avg"][i],
                              "exp_avg_sq": flats["exp_avg_sq"][i]} for i in range(len(SHAPES))},
                "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1]}],
            },
        }  # fmt: skip
        torch.save({"optimizer_state_dict": optim, "ds_version": "0.19.8"},
                   tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")  # fmt: skip
        torch.save({"param_shapes": shapes, "lr_scheduler": {"last_epoch": step}},
                   tag / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")  # fmt: skip
        torch.save({"rank": r}, folder / f"rng_state_{r}.pth")
    return folder


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 2), (4, 2), (2, 4), (4, 3), (3, 4), (8, 7)])
def test_every_new_rank_gets_exactly_its_partition(tmp_path: Path, old: int, new: int) -> None:
    full = full_tensors()
    folder = write_checkpoint(tmp_path / "ckpt", 5, old, full)
    for rank in range(new):
        reader = reshard.SliceReader(folder / "global_step5", old)
        for name in full:
            for key in KEYS:
                got = reader.partition(name, key, rank, new)
                assert torch.equal(got, partition_of(full[name][key], rank, new)), (name, key, rank)
        # It opened exactly the files the fetch plan names, and read exactly its share.
        assert reader.opened == reshard.old_ranks_needed(
            [dict(g) for g in SHAPES], old, {rank}, new
        )
        valid = sum(
            max(0, min(math.ceil(f["fp32"].numel() / new) * (rank + 1), f["fp32"].numel())
                - math.ceil(f["fp32"].numel() / new) * rank)
            for f in full.values()
        )  # fmt: skip
        assert reader.bytes_read == valid * 4 * len(KEYS)


def test_old_ranks_needed_is_a_contiguous_band_of_about_w_over_w_prime() -> None:
    shapes = [{"big": (1024, 1024)}]
    assert reshard.old_ranks_needed(shapes, 4, {0}, 2) == {0, 1}
    assert reshard.old_ranks_needed(shapes, 4, {1}, 2) == {2, 3}
    assert reshard.old_ranks_needed(shapes, 2, {0}, 4) == {0}  # 1 -> 2: half of one old file
    assert reshard.old_ranks_needed(shapes, 2, {3}, 4) == {1}
    assert reshard.old_ranks_needed(shapes, 64, set(range(8, 16)), 56) == set(range(9, 19))


def test_prepare_writes_deepspeeds_universal_entry_points_without_tensors(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", 5, 2, full_tensors())
    doc = reshard.prepare(folder, old_world=2)
    assert (folder / "latest_universal").read_text() == "global_step5"
    zero = folder / "global_step5" / "zero"
    state = torch.load(zero / "optimizer_state.pt", weights_only=False)
    assert state["optimizer_state_dict"]["state"] == {0: {"step": torch.tensor(5.0)}}
    assert state["param_groups"][0]["lr"] == 0.1 and state["loss_scaler"] == "scaler"
    assert "fp32_flat_groups" not in state
    assert (zero / "optimizer_state.pt").stat().st_size < 4096
    assert doc == {"tag": "global_step5", "old_world": 2, "old_ranks_here": [0, 1]}
    assert reshard.reader_for(zero) is not None and reshard.reader_for(folder) is None


def test_a_missing_old_file_is_named(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", 5, 4, full_tensors())
    (folder / "global_step5" / "zero_pp_rank_3_mp_rank_00_optim_states.pt").unlink()
    reader = reshard.SliceReader(folder / "global_step5", 4)
    with pytest.raises(Exception, match="old rank 3's optimizer file is needed"):
        reader.partition("h1", "fp32", 1, 2)


def test_a_node_fetches_only_the_old_files_its_new_ranks_read(s3_run, tmp_path: Path) -> None:
    """4 old ranks resumed on 2 nodes × 1 rank: node 1 downloads old ranks 2 and 3's optimizer
    files (its fair share, 1.0×), old rank 0's small model states and rank 1's RNG."""
    run, got = s3_run
    folder = write_checkpoint(tmp_path / "ckpt", 5, 4, full_tensors())
    publish_dir(folder, f"{run.checkpoints_uri}/{step_folder(5)}",
                metadata={"global_step": 5, "world_size": 4})  # fmt: skip
    dest, _, report = fetch_share(run, tmp_path / "node1", world=2, ranks={1})
    kinds = {rank_kind(name) for name in got if rank_kind(name)[0] is not None}
    assert kinds == {(2, "optim"), (3, "optim"), (0, "model"), (1, "rng")}
    assert report.reshard["old_ranks"] == [2, 3]
    assert report.reshard["optim_bytes"] == report.reshard["fair_share_bytes"]
    # The partitions this node's rank loads from what it fetched are the right ones.
    reshard.prepare(dest, old_world=4)
    reader = reshard.reader_for(dest / "global_step5" / "zero")
    full = full_tensors()
    assert torch.equal(reader.partition("h1", "exp_avg", 1, 2), partition_of(full["h1"]["exp_avg"], 1, 2))
