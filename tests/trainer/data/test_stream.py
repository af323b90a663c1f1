"""Streaming the shards: global order independent of the rank count, exact mid-epoch resume, the cache."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from test_prepare import make_cfg

from trainer.data import prepare as prep
from trainer.data.loader import open_data
from trainer.data.stream import (
    POSITION_FILE,
    GlobalOrder,
    ShardIndex,
    ShardReader,
    StreamSampler,
    check_resume_position,
    position,
)
from trainer.errors import TrainerError

BLOCKS = (37, 41, 29, 40, 33, 12)  # uneven shards, like the last shard of each unit


def order(global_batch: int = 8, window: int = 2, seed: int = 3) -> GlobalOrder:
    return GlobalOrder(BLOCKS, seed, window, global_batch)


def test_the_order_is_a_pure_function_of_seed_and_epoch() -> None:
    o = order()
    e0, e0b, e1 = list(o.iter_epoch(0)), list(order().iter_epoch(0)), list(o.iter_epoch(1))
    assert e0 == e0b and e0 != e1
    assert len(e0) == len(o) == (sum(BLOCKS) // 8) * 8  # whole global batches
    assert len(set(e0)) == len(e0) and set(e0) <= set(range(sum(BLOCKS)))
    assert list(order(seed=4).iter_epoch(0)) != e0
    for start in (0, 1, 37, 100, len(o) - 3):  # a later start generates exactly the tail
        assert list(o.iter_epoch(1, start)) == e1[start:]


def _steps(o: GlobalOrder, world: int, per_device: int, accum: int, epoch: int) -> list[list[int]]:
    """Samples of each optimizer step, through the DataLoader sharding HF Trainer uses (accelerate)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    per_rank = []
    for r in range(world):
        sampler = StreamSampler(o)
        dl = DataLoader(list(range(sum(BLOCKS))), batch_size=per_device, sampler=sampler)
        dl = prepare_data_loader(dl, num_processes=world, process_index=r, put_on_device=False)
        dl.set_epoch(epoch)
        sampler.set_epoch(epoch)  # as Trainer does for a sampler under BatchSamplerShard
        per_rank.append([b.tolist() for b in dl])
    n_steps = len(per_rank[0]) // accum
    assert all(len(p) == len(per_rank[0]) for p in per_rank)
    return [
        sorted(i for p in per_rank for m in range(k * accum, (k + 1) * accum) for i in p[m])
        for k in range(n_steps)
    ]


@pytest.mark.parametrize("epoch", [0, 1])
def test_same_global_batches_with_one_and_two_ranks(epoch: int) -> None:
    o = order(global_batch=8)
    one = _steps(o, world=1, per_device=8, accum=1, epoch=epoch)
    two = _steps(o, world=2, per_device=4, accum=1, epoch=epoch)
    two_accum = _steps(o, world=2, per_device=2, accum=2, epoch=epoch)
    seq = list(o.iter_epoch(epoch))
    assert one == two == two_accum
    assert one == [sorted(seq[k * 8 : (k + 1) * 8]) for k in range(len(seq) // 8)]


def _prepared(tmp_path: Path, **data):
    cfg = make_cfg(shuffle_window=2, **data)  # test_data's tiny corpus recipe
    prep.prepare(cfg, str(tmp_path / "run"), tmp_path / "w", workers=1, bar=False)
    return cfg


class Recording:
    """Wraps a dataset and records every index read."""

    def __init__(self, ds) -> None:
        self.ds, self.reads = ds, []

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.ds[i]


def _train(
    cfg, tmp_path: Path, out: Path, max_steps: int, resume: str | None = None, save_steps: int = 6
) -> list[int]:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from trainer.loop.callbacks import DataPositionCallback
    from trainer.loop.hf import streaming_trainer_class

    data = open_data(cfg, str(tmp_path / "run"), tmp_path / "w", global_batch=4)
    import torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(data.tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    )
    ds = Recording(data.train)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, save_strategy="steps",
        save_steps=save_steps, report_to="none", use_cpu=True, logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=1,
    )  # fmt: skip
    trainer = streaming_trainer_class(Trainer, data.sampler)(
        model=model, args=args, train_dataset=ds, data_collator=default_data_collator,
        callbacks=[DataPositionCallback(data.order, data.fingerprint)],
    )  # fmt: skip
    if resume:
        check_resume_position(Path(resume), data.order, data.fingerprint, save_steps)
    trainer.train(resume_from_checkpoint=resume)
    return ds.reads


def test_mid_epoch_resume_sees_exactly_the_batches_of_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _prepared(tmp_path)
    data = open_data(cfg, str(tmp_path / "run"), tmp_path / "w", global_batch=4)
    steps_per_epoch = len(data.order) // 4
    total = steps_per_epoch + 5  # crosses into the second epoch
    assert steps_per_epoch > 6  # the save at step 6 is mid-epoch
    full = _train(cfg, tmp_path, tmp_path / "a", total)
    resumed = _train(
        cfg, tmp_path, tmp_path / "b", total, resume=str(tmp_path / "a" / "checkpoint-6")
    )
    assert full[: 6 * 4] != resumed[: 6 * 4]
    assert resumed == full[6 * 4 :]  # the next global sample on, and nothing skipped was read
    expect = list(data.order.iter_epoch(0)) + list(data.order.iter_epoch(1))
    # Trained samples follow the global order across the epoch boundary (the loader may read one
    # batch ahead at the end, in both runs alike).
    assert full[: total * 4] == expect[: total * 4] and len(full) - total * 4 in (0, 4)
    saved = json.loads((tmp_path / "a" / "checkpoint-6" / POSITION_FILE).read_text())
    assert saved == position(6, data.order, data.fingerprint)
    assert saved["sample_in_epoch"] == 24 and saved["epoch"] == 0


def test_resume_in_a_later_epoch_continues_that_epochs_order(tmp_path: Path) -> None:
    cfg = _prepared(tmp_path)
    data = open_data(cfg, str(tmp_path / "run"), tmp_path / "w", global_batch=4)
    spe = len(data.order) // 4
    at, total = spe + 2, spe + 5  # saved in the middle of epoch 1
    full = _train(cfg, tmp_path, tmp_path / "a", total, save_steps=at)
    resumed = _train(
        cfg, tmp_path, tmp_path / "b", total, resume=str(tmp_path / "a" / f"checkpoint-{at}"),
        save_steps=at,
    )  # fmt: skip
    assert resumed == full[at * 4 :]
    assert resumed[:4] == list(data.order.iter_epoch(1))[8:12]  # epoch 1's order, not epoch 0's


class _Base:
    """Stands in for HF Trainer: records the sampler's epoch when an epoch starts."""

    seen: list[int] = []

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch):
        self.seen.append(self.sampler.epoch)


def test_the_trainer_sets_the_sampler_epoch_itself() -> None:
    """accelerate's set_epoch does not reach a sampler behind skip_first_batches on >1 ranks
    (SkipBatchSampler -> BatchSamplerShard): the streaming trainer sets it where the epoch is named."""
    from transformers import Trainer

    from trainer.data.stream import StreamSampler
    from trainer.loop.hf import streaming_trainer_class

    assert "epoch" in inspect.signature(Trainer._run_epoch).parameters  # the hook exists in this HF
    sampler = StreamSampler(order(global_batch=8))
    t = streaming_trainer_class(_Base, sampler)(sampler)
    t._run_epoch(None, 3, None, 10)
    t._run_epoch(model=None, epoch=4, train_dataloader=None, steps_in_epoch=10)
    assert t.seen == [3, 4]
    with pytest.raises(TrainerError, match="_run_epoch"):
        streaming_trainer_class(object, sampler)


def test_resume_refuses_a_different_global_batch(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    o = order(global_batch=8)
    (tmp_path / "ck" / POSITION_FILE).write_text(json.dumps(position(3, o, "abc")))
    check_resume_position(tmp_path / "ck", o, "abc", 3)
    with pytest.raises(TrainerError, match="global_batch 8"):
        check_resume_position(tmp_path / "ck", order(global_batch=16), "abc", 3)
    with pytest.raises(TrainerError, match="fingerprint"):
        check_resume_position(tmp_path / "ck", o, "other", 3)
    # training.allow_global_batch_change accepts a new batch (with a warning), not new data
    check_resume_position(
        tmp_path / "ck", order(global_batch=16), "abc", 3, allow_batch_change=True
    )
    with pytest.raises(TrainerError, match="fingerprint"):
        check_resume_position(tmp_path / "ck", o, "other", 3, allow_batch_change=True)


def test_remote_shards_are_cached_locally_and_evicted(tmp_path: Path, monkeypatch) -> None:
    """Training from a remote store keeps at most ``keep`` shards on local disk."""
    import numpy as np

    from artifacts.store import LocalStore

    root = tmp_path / "remote"
    sha = {}
    for k, n in enumerate((10, 10, 10)):
        arr = np.arange(k * 1000, k * 1000 + n * 4, dtype=np.uint16)
        root.mkdir(exist_ok=True)
        arr.tofile(root / f"s{k}.bin")
        import hashlib

        sha[f"s{k}.bin"] = hashlib.sha256(arr.data).hexdigest()
    ix = ShardIndex(("s0.bin", "s1.bin", "s2.bin"), (40, 40, 40), 4, "uint16")
    monkeypatch.setattr(ShardReader, "_local", staticmethod(lambda uri: None))  # behave as remote
    monkeypatch.setattr("artifacts.store.open_store", lambda uri: LocalStore(root))
    reader = ShardReader("s3://fake/x", ix, sha, tmp_path / "scratch", keep=2)
    assert reader.block(0).tolist() == [0, 1, 2, 3]
    assert reader.block(10).tolist() == [1000, 1001, 1002, 1003]
    assert reader.block(29).tolist() == [2036, 2037, 2038, 2039]
    cached = sorted(p.name for p in (tmp_path / "scratch" / "shard-cache").iterdir())
    assert cached == ["s1.bin", "s2.bin"] and reader.downloads == 3  # s0 evicted
    sha["s0.bin"] = "0" * 64
    with pytest.raises(TrainerError, match="SHA-256 differs"):
        reader.block(1)
