"""The resharding load puts the same state into a real DeepSpeed ZeRO-3 engine as ``ds_to_universal``.

CPU gloo ranks, a tiny GPT-2, DeepSpeed's own engine: train 2 steps on W ranks and save; then on
W' ranks build two engines, one loaded from DeepSpeed's universal conversion (the checked
reference: ``ds_to_universal`` + ``load_universal``), one through :mod:`trainer.checkpoint.reshard`
from the original shards; every fp32 master partition, both Adam moments, the optimizer step and
the 16-bit partitions must be equal tensor for tensor on every rank, and the next step's loss
equal. 2 → 1 and 1 → 2.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine(load_universal: bool):
    import deepspeed
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def _step(engine, rank: int, step: int) -> float:
    import torch

    g = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randint(0, 64, (2, 16), generator=g)
    loss = engine(input_ids=x, labels=x).loss
    engine.backward(loss)
    engine.step()
    return float(loss)


def _dump(engine) -> dict:
    opt = engine.optimizer
    out = {"fp32": [], "exp_avg": [], "exp_avg_sq": [], "step": [], "bit16": []}
    for flat in opt.fp32_partitioned_groups_flat:
        state = opt.optimizer.state[flat]
        out["fp32"].append(flat.detach().clone())
        out["exp_avg"].append(state["exp_avg"].clone())
        out["exp_avg_sq"].append(state["exp_avg_sq"].clone())
        out["step"].append(float(state["step"]))
    for flat in opt.fp16_partitioned_groups_flat:
        out["bit16"].append(flat.detach().clone())
    return out


def _worker(rank: int, world: int, port: int, job: str, folder: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")  # fmt: skip
    import deepspeed
    import torch

    from trainer.loop.cpu_compat import disable_shm_comm_op

    torch.set_num_threads(1)
    disable_shm_comm_op()
    deepspeed.init_distributed(dist_backend="gloo")
    if job == "train":
        engine = _engine(load_universal=False)
        for step in range(2):
            _step(engine, rank, step)
        engine.save_checkpoint(folder, tag="global_step2")
        return
    from trainer.checkpoint.reshard import install

    results = {}
    for mode in ("universal", "reshard"):
        engine = _engine(load_universal=True)
        if mode == "reshard":
            install()
        engine.load_checkpoint(f"{folder}-{mode}", load_optimizer_states=True)
        results[mode] = _dump(engine)
        results[mode]["next_loss"] = _step(engine, rank, 2)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _spawn(world: int, job: str, folder: Path, out: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _port(), job, str(folder), str(out)), nprocs=world, join=True)


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 2)])
def test_resharded_engine_state_equals_the_universal_load(tmp_path: Path, old: int, new: int) -> None:
    import torch

    from trainer.checkpoint.elastic import to_universal
    from trainer.checkpoint.reshard import prepare

    saved = tmp_path / "ckpt"
    _spawn(old, "train", saved, tmp_path)
    to_universal(saved, tmp_path / "ckpt-universal")
    shutil.copytree(saved, tmp_path / "ckpt-reshard")
    prepare(tmp_path / "ckpt-reshard", old_world=old)
    out = tmp_path / "out"
    out.mkdir()
    _spawn(new, "load", saved, out)

    for rank in range(new):
        got = torch.load(out / f"rank{rank}.pt", weights_only=False)
        ref, mine = got["universal"], got["reshard"]
        assert mine["step"] == ref["step"] == [2.0] * len(ref["step"])
        for key in ("fp32", "exp_avg", "exp_avg_sq", "bit16"):
            assert len(mine[key]) == len(ref[key]) > 0
            for a, b in zip(mine[key], ref[key], strict=True):
                assert torch.equal(a, b), (rank, key)
        assert mine["fp32"][0].abs().sum() > 0 and mine["exp_avg_sq"][0].abs().sum() > 0
        assert mine["next_loss"] == ref["next_loss"]
