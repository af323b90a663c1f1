"""Data: generated corpus, tokenizer trained locally, packed blocks, split, cache in the run prefix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from artifacts.manifest import MANIFEST_NAME
from artifacts.run import Run
from artifacts.store import open_store
from trainer import data as data_mod
from trainer.config import config_from_dict
from trainer.corpus import generate_corpus
from trainer.data import BlockDataset, load_tokenizer, prepare_data
from trainer.errors import TrainerError


def make_cfg(**data):
    section = {
        "generated_corpus": True,
        "generated_corpus_bytes": 30_000,
        "vocab_size": 300,
        "block_size": 32,
    }
    section.update(data)
    if "train_files" in data:
        section["generated_corpus"] = False
    return config_from_dict({"data": section}, source="test.toml")


def solo(cfg, run: str, work: Path, rank: int = 0, local_rank: int = 0):
    return prepare_data(
        cfg, Run(str(run)), work, rank=rank, local_rank=local_rank, all_ok=lambda ok: ok
    )


def test_generated_corpus_is_deterministic_and_sized() -> None:
    a, b = generate_corpus(20_000, seed=1), generate_corpus(20_000, seed=1)
    assert a == b and 20_000 <= len(a) < 21_000
    assert generate_corpus(20_000, seed=2) != a
    assert a.count(".") > 300  # many short sentences from a small grammar: learnable


def test_prepare_builds_commits_and_splits(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    prepared = solo(make_cfg(), run, tmp_path / "work")
    train, val = np.load(prepared.train_path), np.load(prepared.val_path)
    assert train.shape[1] == val.shape[1] == 32
    assert len(val) >= 1 and len(train) > 5 * len(val)
    assert not {r.tobytes() for r in val} & {r.tobytes() for r in train}  # held out
    assert open_store(run).exists(
        f"{Run.CACHE_DATA}/{MANIFEST_NAME}"
    )  # committed in the run prefix
    tok = load_tokenizer(prepared.root)
    text = "The red fox sees the river."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert 260 <= len(tok) <= 300 and tok.eos_token == data_mod.EOS_TOKEN
    ds = BlockDataset(prepared.train_path)
    item = ds[0]
    assert item["input_ids"].dtype.is_signed and item["input_ids"].shape == (32,)
    assert (item["labels"] == item["input_ids"]).all()


def test_second_launch_reuses_the_cache_without_tokenizing(tmp_path: Path, monkeypatch) -> None:
    run = str(tmp_path / "run")
    first = solo(make_cfg(), run, tmp_path / "work")
    before = first.train_path.read_bytes()

    def boom(*a, **k):
        raise AssertionError("rebuilt the cache")

    monkeypatch.setattr(data_mod, "build_cache", boom)
    again = solo(make_cfg(), run, tmp_path / "work")
    assert again.train_path.read_bytes() == before
    other_node = solo(make_cfg(), run, tmp_path / "node1", rank=8, local_rank=0)  # downloads
    assert other_node.train_path.read_bytes() == before
    assert other_node.fingerprint == first.fingerprint


def test_changed_data_settings_rebuild_the_cache(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    a = solo(make_cfg(), run, tmp_path / "work")
    b = solo(make_cfg(block_size=16), run, tmp_path / "work")
    assert a.fingerprint != b.fingerprint
    assert np.load(b.train_path).shape[1] == 16


def test_text_files_from_a_glob_and_from_the_run_prefix(tmp_path: Path) -> None:
    text = generate_corpus(30_000, seed=5)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(text[:15_000])
    (tmp_path / "corpus" / "b.txt").write_text(text[15_000:])
    local = solo(
        make_cfg(train_files=[str(tmp_path / "corpus" / "*.txt")]),
        str(tmp_path / "r1"),
        tmp_path / "w1",
    )
    run = tmp_path / "r2"
    open_store(str(run)).put_bytes("data/all.txt", text.encode())
    remote = solo(make_cfg(train_files=["run:data/"]), str(run), tmp_path / "w2")
    folder = solo(
        make_cfg(train_files=[str(tmp_path / "corpus")]), str(tmp_path / "r3"), tmp_path / "w3"
    )
    # A folder means the files under it: same blocks as the glob.
    assert folder.train_path.read_bytes() == local.train_path.read_bytes()
    assert np.load(local.train_path).size > 0 and np.load(remote.train_path).size > 0


def test_missing_files_and_tiny_corpora_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no file matches"):
        solo(
            make_cfg(train_files=[str(tmp_path / "none-*.txt")]),
            str(tmp_path / "r"),
            tmp_path / "w",
        )
    (tmp_path / "small.txt").write_text("hello world\n")
    with pytest.raises(TrainerError, match="too few"):
        solo(
            make_cfg(train_files=[str(tmp_path / "small.txt")]), str(tmp_path / "r"), tmp_path / "w"
        )


def test_a_failure_on_rank_0_stops_the_other_ranks_with_an_error(tmp_path: Path) -> None:
    votes = []

    def all_ok(ok: bool) -> bool:
        votes.append(ok)
        return False  # rank 0 reported failure

    with pytest.raises(TrainerError, match="failed on rank 0"):
        prepare_data(
            make_cfg(),
            Run(str(tmp_path / "r")),
            tmp_path / "w",
            rank=1,
            local_rank=1,
            all_ok=all_ok,
        )
    assert votes == [True]
