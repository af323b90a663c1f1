"""prepare-data: sources → tokenizer → token shards committed in the run prefix; resume; bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifacts.manifest import MANIFEST_NAME, Manifest
from artifacts.run import Run, RunState
from artifacts.store import LocalStore, open_store
from trainer.config import config_from_dict
from trainer.data import prepare as prep
from trainer.data import worker as tokenize_worker
from trainer.data.corpus import generate_corpus
from trainer.data.loader import open_data
from trainer.data.report import REPORT_NAME
from trainer.data.shards import CACHE_PREFIX
from trainer.data.tokenizer import load_tokenizer
from trainer.errors import TrainerError

ROOT = Path(__file__).resolve().parents[3]


def make_cfg(**data):
    section = {
        "generated_corpus": True,
        "generated_corpus_bytes": 30_000,
        "vocab_size": 300,
        "block_size": 32,
        "val_fraction": 0.1,
        "shard_bytes": 4096,
        "tokenizer_sample_bytes": 20_000,
    }
    section.update(data)
    if "train_files" in data:
        section["generated_corpus"] = False
    return config_from_dict({"data": section}, source="test.toml")


def run(cfg, run_uri, work: Path, **kw):
    kw.setdefault("workers", 1)
    return prep.prepare(cfg, str(run_uri), work, bar=False, **kw)


def manifest(run_uri) -> Manifest:
    return Manifest.from_json(open_store(str(run_uri)).child(CACHE_PREFIX).get_bytes(MANIFEST_NAME))


def shard_tokens(run_uri, meta, split: str) -> list[np.ndarray]:
    store = open_store(str(run_uri)).child(CACHE_PREFIX)
    return [np.frombuffer(store.get_bytes(p), dtype=meta["dtype"]) for p, _ in meta[split]]


def docs_of(arrays: list[np.ndarray], eos: int) -> list[tuple[int, ...]]:
    out = []
    for a in arrays:
        cuts = np.flatnonzero(a == eos)
        start = 0
        for c in cuts:
            out.append(tuple(a[start:c].tolist()))
            start = c + 1
    return out


def big_text(tmp_path: Path, name: str = "corpus.txt", size: int = 60_000, seed: int = 5) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate_corpus(size, seed=seed))
    return path


def test_shards_are_committed_hashed_and_manifest_is_last(tmp_path: Path) -> None:
    r = tmp_path / "run"
    res = run(make_cfg(), r, tmp_path / "w")
    m = manifest(r)
    meta = m.metadata
    assert not res.reused and meta["fingerprint"] == res.fingerprint
    assert len(meta["train"]) >= 3  # fixed-size shards of ~4 KiB (2048 uint16 tokens)
    cache = LocalStore(r / CACHE_PREFIX)
    for f in m.files:  # every listed file exists with its size and hash
        entry = cache.download_file(f.path, tmp_path / "check" / f.path)
        assert (entry.size, entry.sha256) == (f.size, f.sha256)
    units: dict[str, list[int]] = {}
    for path, tokens in meta["train"]:
        units.setdefault(path.rsplit("-", 2)[-2], []).append(tokens)
    full = [t for sizes in units.values() for t in sizes[:-1]]  # a unit's last shard is partial
    assert full and all(
        2048 <= t < 2048 + 600 for t in full
    )  # fixed size, rounded up to a batch end
    tok = load_tokenizer(tmp_path / "check" / meta["tokenizer"])
    assert (
        tok.decode(tok("The red fox sees the river.")["input_ids"]) == "The red fox sees the river."
    )
    train = docs_of(shard_tokens(r, meta, "train"), meta["eos_token_id"])
    val = docs_of(shard_tokens(r, meta, "val"), meta["eos_token_id"])
    assert len(val) >= 5 and len(train) > 5 * len(val)
    assert not set(train) & set(val)  # held out at document level, no overlap
    status = Run(str(r)).read_status()
    assert status.state == RunState.PREPARED and status.extra["data_prep"]["tokens"] > 0
    assert status.extra["launches"] == []  # preparing is not a launch of the ranks
    from trainer.launch.lifecycle import data_prep_line

    line = data_prep_line(status.extra["data_prep"])  # what `invoke status` prints
    assert line.startswith("preparing data (committed): 100.0% of 0.00 GB") and "tokens/s" in line


def test_same_shards_for_any_number_of_workers_and_a_second_run_reuses(
    tmp_path: Path, monkeypatch
) -> None:
    src = big_text(tmp_path, size=80_000)  # > 4 shards of text: several units of one file
    cfg = make_cfg(train_files=[str(src)])
    one = run(cfg, tmp_path / "r1", tmp_path / "w1", workers=1)
    two = run(cfg, tmp_path / "r2", tmp_path / "w2", workers=2)
    assert len(prep.all_units(prep.config_sources(cfg.data, cfg.source, "", tmp_path / "w1"), 4096)) >= 3
    shas = lambda r: [(f.path, f.sha256) for f in manifest(r).files if f.path != REPORT_NAME]  # noqa: E731
    assert shas(tmp_path / "r1") == shas(tmp_path / "r2") and one.fingerprint == two.fingerprint

    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokenize_worker, "run_job", boom)
    again = run(cfg, tmp_path / "r1", tmp_path / "w1")
    assert again.reused and again.fingerprint == one.fingerprint


def test_an_interrupted_preparation_keeps_its_committed_shards(tmp_path: Path, monkeypatch) -> None:
    src = big_text(tmp_path, size=80_000)
    cfg = make_cfg(train_files=[str(src)])
    reference = run(cfg, tmp_path / "ref", tmp_path / "wref")
    real_upload = LocalStore.upload_file
    uploads: list[str] = []

    def flaky(self, local_path, key, **kw):
        if key.endswith(".bin"):
            uploads.append(key)
            if len(uploads) == 5:
                raise KeyboardInterrupt  # Ctrl-C / spot loss in the middle of a shard upload
        return real_upload(self, local_path, key, **kw)

    monkeypatch.setattr(LocalStore, "upload_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", tmp_path / "w")
    stopped = Run(str(tmp_path / "run")).read_status()
    assert stopped.state is RunState.INTERRUPTED and "interrupted" in stopped.reason
    cache = tmp_path / "run" / CACHE_PREFIX
    assert not (cache / MANIFEST_NAME).exists()  # nothing committed as a whole
    markers = sorted((cache / "_parts" / reference.fingerprint).glob("u*.json"))
    kept = {p.name: p.stat().st_mtime_ns for p in (cache / reference.fingerprint).glob("*.bin")}
    assert markers and kept
    monkeypatch.setattr(LocalStore, "upload_file", real_upload)
    written: list[str] = []
    real_write = tokenize_worker._write_shard

    def spy(tokens, count, dtype, path):
        written.append(path.name)
        return real_write(tokens, count, dtype, path)

    monkeypatch.setattr(tokenize_worker, "_write_shard", spy)
    done = run(cfg, tmp_path / "run", tmp_path / "w")
    committed = {
        json.loads(p.read_text())["train"]["path"].rsplit("/", 1)[-1]
        for p in markers
        if json.loads(p.read_text())["train"]
    }
    assert committed and not committed & set(written)  # committed shards were not redone
    for name, mtime in kept.items():
        if name in committed:
            assert (cache / reference.fingerprint / name).stat().st_mtime_ns == mtime
    assert done.fingerprint == reference.fingerprint
    finished = Run(str(tmp_path / "run")).read_status()
    assert finished.state is RunState.PREPARED and finished.reason is None
    assert finished.extra["data_prep"]["stage"] == "committed"
    shas = lambda r: [(f.path, f.sha256) for f in manifest(r).files if f.path != REPORT_NAME]  # noqa: E731
    assert shas(tmp_path / "run") == shas(tmp_path / "ref")  # same result as an uninterrupted run


def test_a_changed_source_of_the_same_size_rebuilds(tmp_path: Path, monkeypatch) -> None:
    from trainer.data import sources

    src = big_text(tmp_path, size=20_000)
    cfg = make_cfg(train_files=[str(src)])
    first = run(cfg, tmp_path / "r", tmp_path / "w")
    hashed: list[Path] = []
    real_hash = sources._sha256_file
    monkeypatch.setattr(sources, "_sha256_file", lambda p: hashed.append(p) or real_hash(p))
    assert run(cfg, tmp_path / "r", tmp_path / "w").reused and not hashed  # stat unchanged: cached
    text = src.read_text()
    st = src.stat()
    i = text.index("fox") if "fox" in text else text.index("dog")
    src.write_text(text[:i] + text[i:].replace(text[i : i + 3], "cow", 1))
    os.utime(
        src, ns=(st.st_atime_ns, st.st_mtime_ns)
    )  # same size, same mtime: only content differs
    assert src.stat().st_size == st.st_size
    second = run(cfg, tmp_path / "r", tmp_path / "w")
    assert hashed == [src]  # the ctime moved with the write, so the content was hashed again
    assert not second.reused and second.fingerprint != first.fingerprint
    assert manifest(tmp_path / "r").metadata["fingerprint"] == second.fingerprint
    stale = [p for p in (tmp_path / "r" / CACHE_PREFIX).iterdir() if p.name == first.fingerprint]
    assert not stale  # the old shards are gone


def test_block_size_is_cut_when_reading_so_it_reuses_the_shards(tmp_path: Path) -> None:
    a = run(make_cfg(), tmp_path / "r", tmp_path / "w")
    b = run(make_cfg(block_size=16), tmp_path / "r", tmp_path / "w")
    assert b.reused and a.fingerprint == b.fingerprint
    d16 = open_data(make_cfg(block_size=16), str(tmp_path / "r"), tmp_path / "w", global_batch=4)
    d32 = open_data(make_cfg(), str(tmp_path / "r"), tmp_path / "w", global_batch=4)
    assert d16.train[0]["input_ids"].shape == (16,) and len(d16.train) >= 2 * len(d32.train) - 10


def test_text_jsonl_gz_zst_folders_and_the_run_prefix(tmp_path: Path) -> None:
    import zstandard

    text = generate_corpus(30_000, seed=7)
    lines = [ln for ln in text.splitlines() if ln]
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n".join(lines[:40]) + "\n")
    with gzip.open(d / "b.txt.gz", "wt") as f:
        f.write("\n".join(lines[40:80]) + "\n")
    records = "".join(json.dumps({"text": ln, "id": i}) + "\n" for i, ln in enumerate(lines[80:]))
    (d / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records.encode()))
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(lines) + "\n")
    mixed = run(make_cfg(train_files=[str(d)]), tmp_path / "r1", tmp_path / "w1").metadata
    same = run(make_cfg(train_files=[str(plain)]), tmp_path / "r2", tmp_path / "w2").metadata
    assert mixed["docs"] == same["docs"] == len(lines)
    assert mixed["train_tokens"] + mixed["val_tokens"] == same["train_tokens"] + same["val_tokens"]
    r3 = tmp_path / "r3"
    open_store(str(r3)).put_bytes("data/all.txt", text.encode())
    from_run = run(make_cfg(train_files=["run:data/"]), r3, tmp_path / "w3").metadata
    assert from_run["docs"] == len(lines)


def test_s3_prefix_through_the_store(tmp_path: Path, monkeypatch) -> None:
    import boto3
    from moto import mock_aws

    text = generate_corpus(30_000, seed=9)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpus-bucket")
        s3.put_object(Bucket="corpus-bucket", Key="c/part-0.txt", Body=text[:15_000].encode())
        s3.put_object(Bucket="corpus-bucket", Key="c/part-1.txt", Body=text[15_000:].encode())
        cfg = make_cfg(train_files=["s3://corpus-bucket/c/"])
        first = run(cfg, "s3://corpus-bucket/runs/x", tmp_path / "w")
        assert [s["identity"].startswith("etag:") for s in first.metadata["sources"]] == [
            True,
            True,
        ]
        assert run(cfg, "s3://corpus-bucket/runs/x", tmp_path / "w").reused
        # Same size, new bytes: the ETag changes, so the cache is rebuilt.
        body = text[:15_000].replace("fox", "cow", 1).encode()
        assert len(body) == 15_000
        s3.put_object(Bucket="corpus-bucket", Key="c/part-0.txt", Body=body)
        assert not run(cfg, "s3://corpus-bucket/runs/x", tmp_path / "w").reused
        data = open_data(cfg, "s3://corpus-bucket/runs/x", tmp_path / "w2", global_batch=4)
        assert data.train[3]["input_ids"].shape == (32,)
        assert data.train.reader.downloads == 1  # one shard fetched into the local cache
        s3.create_bucket(Bucket="empty-bucket")
        with pytest.raises(TrainerError, match="nothing under s3://empty-bucket/none"):
            run(
                make_cfg(train_files=["s3://empty-bucket/none/"]),
                "s3://corpus-bucket/runs/y",
                tmp_path / "w",
            )


# -- bad input: one line naming the file (and line), nothing committed -----------------------


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bin.txt", b"hello\n\x00\x01\x02binary", r"bin.txt: binary data"),
        ("latin.txt", b"ok line\n" * 3 + b"caf\xe9\n", r"latin.txt:4: not UTF-8"),
        ("late.txt", b"fine words here\n" * 9000 + b"bad \xff\n", r"late.txt:9001: not UTF-8"),
        ("r.jsonl", b'{"text": "one"}\n{"body": "two"}\n', r'r.jsonl:2: record has no "text"'),
        ("j.jsonl", b'{"text": "one"}\nnot json\n', r"j.jsonl:2: not a JSON record"),
        ("empty.txt", b"", r"every source is empty"),
        ("blank.txt", b"\n\n   \n", r"holds no text"),
        ("tiny.txt", b"hello world\n" * 3, r"corpus too small"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path: Path, name, content, match) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    r = tmp_path / "run"
    with pytest.raises(TrainerError, match=match) as err:
        run(make_cfg(train_files=[str(path)], shard_bytes=1 << 20), r, tmp_path / "w")
    assert "\n" not in str(err.value)
    cache = r / CACHE_PREFIX
    assert not (cache / MANIFEST_NAME).exists()
    assert not list(cache.glob("*/*.bin")) if cache.exists() else True  # nothing half-committed


def test_a_bad_record_leaves_a_failed_status_naming_file_and_line(tmp_path: Path) -> None:
    """Any ending of preparation leaves a final state: never "preparing" forever."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"text": "one"}\n' * 50 + b'{"body": "two"}\n')
    r = tmp_path / "run"
    with pytest.raises(TrainerError, match=r'r.jsonl:51: record has no "text"'):
        run(make_cfg(train_files=[str(path)], shard_bytes=1 << 20), r, tmp_path / "w")
    status = Run(str(r)).read_status()
    assert status is not None and status.state is RunState.FAILED
    assert 'r.jsonl:51: record has no "text"' in status.reason


def test_missing_files_and_empty_folders_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no file matches"):
        run(make_cfg(train_files=[str(tmp_path / "none-*.txt")]), tmp_path / "r", tmp_path / "w")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainerError, match="holds no files"):
        run(make_cfg(train_files=[str(tmp_path / "empty")]), tmp_path / "r", tmp_path / "w")
    with pytest.raises(TrainerError, match="nothing under"):
        run(make_cfg(train_files=["run:data/"]), tmp_path / "r", tmp_path / "w")


def test_the_command_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\x00" * 100)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ntrain_files = ["{bad}"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.data.prepare", "--config", str(cfg), "--run", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: binary data")
    assert "Traceback" not in proc.stderr


def test_two_nodes_take_disjoint_sources_and_commit_the_same_cache(
    tmp_path: Path, monkeypatch
) -> None:
    import threading

    text = generate_corpus(60_000, seed=11)
    d = tmp_path / "corpus"
    d.mkdir()
    for k in range(4):
        (d / f"part-{k}.txt").write_text(text[k * 15_000 : (k + 1) * 15_000])
    cfg = make_cfg(train_files=[str(d)], shard_bytes=1 << 20)
    single = run(cfg, tmp_path / "one", tmp_path / "w-one")
    from trainer.data import shards

    monkeypatch.setattr(shards, "POLL_S", 0.05)
    seen: dict[int, list[str]] = {0: [], 1: []}
    real_job = tokenize_worker.run_job

    def spy(job, progress=None):
        seen[int(threading.current_thread().name[-1])].append(Path(job.unit.source.name).name)
        return real_job(job, progress)

    monkeypatch.setattr(tokenize_worker, "run_job", spy)
    results: dict[int, object] = {}

    def node(rank: int) -> None:
        try:
            results[rank] = run(
                cfg, tmp_path / "two", tmp_path / f"w{rank}", node_rank=rank, node_count=2
            )
        except BaseException as err:  # surfaced by the assertion below
            results[rank] = err

    threads = [threading.Thread(target=node, args=(r,), name=f"node{r}") for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not isinstance(r, BaseException) for r in results.values()), results
    assert sorted(seen[0]) == ["part-0.txt", "part-2.txt"] and sorted(seen[1]) == [
        "part-1.txt",
        "part-3.txt",
    ]
    shas = lambda r: [(f.path, f.sha256) for f in manifest(r).files if f.path != REPORT_NAME]  # noqa: E731
    assert shas(tmp_path / "two") == shas(tmp_path / "one")
    assert results[1].fingerprint == single.fingerprint


def test_the_other_local_ranks_wait_for_local_rank_0_and_share_its_failure(
    tmp_path: Path, monkeypatch
) -> None:
    """Before torch.distributed exists: no collective, a node-local file tells the others."""
    import threading

    from trainer.data import loader as data_mod

    monkeypatch.setattr(data_mod, "POLL_S", 0.02)

    def both(cfg, run_uri, work):
        out: dict[int, object] = {}

        def rank(local_rank: int) -> None:
            try:
                data_mod.ensure_prepared(
                    cfg, run_uri, work, node_rank=0, num_nodes=1, local_rank=local_rank
                )
                out[local_rank] = "ok"
            except TrainerError as err:
                out[local_rank] = str(err)

        threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return out

    assert both(make_cfg(), str(tmp_path / "r"), tmp_path / "w") == {0: "ok", 1: "ok"}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01")
    out = both(make_cfg(train_files=[str(bad)]), str(tmp_path / "r2"), tmp_path / "w2")
    assert out[0] == out[1] and "binary data" in str(out[1])


def test_bad_input_found_by_a_worker_process_stops_the_pool(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text(generate_corpus(20_000, seed=1))
    (d / "late.txt").write_bytes(
        b"fine words here\n" * 9000 + b"bad \xff\n"
    )  # past the sniff window
    r = tmp_path / "run"
    with pytest.raises(TrainerError, match=r"late.txt:9001: not UTF-8"):
        run(make_cfg(train_files=[str(d)], shard_bytes=1 << 20), r, tmp_path / "w", workers=2)
    assert not (r / CACHE_PREFIX / MANIFEST_NAME).exists()
    assert not list((r / CACHE_PREFIX).glob("*/*.bin"))


def test_an_existing_tokenizer_folder_is_used_as_it_is(tmp_path: Path) -> None:
    first = run(make_cfg(), tmp_path / "r1", tmp_path / "w1").metadata
    folder = tmp_path / "r1" / CACHE_PREFIX / first["tokenizer"]
    again = run(make_cfg(tokenizer=str(folder)), tmp_path / "r2", tmp_path / "w2").metadata
    assert (again["eos_token_id"], again["vocab_size"]) == (
        first["eos_token_id"],
        first["vocab_size"],
    )
    assert (
        again["train_tokens"] + again["val_tokens"] == first["train_tokens"] + first["val_tokens"]
    )
    (tmp_path / "notok").mkdir()
    with pytest.raises(TrainerError, match="no tokenizer.json"):
        run(make_cfg(tokenizer=str(tmp_path / "notok")), tmp_path / "r3", tmp_path / "w3")


@pytest.mark.timeout(120)
def test_a_late_node_stops_waiting_once_node_0_has_committed(tmp_path: Path, monkeypatch) -> None:
    """A node still polling for intermediate markers after node 0 committed and cleaned them up
    must not wait forever: the committed manifest ends the wait. (Seen as a hang of two torchrun
    "nodes": node 1 polled for dedup scan markers node 0 had already removed.)"""
    import threading

    from trainer.data import shards

    monkeypatch.setattr(shards, "POLL_S", 0.05)
    cfg = make_cfg()
    results: dict[int, object] = {}

    def node(rank: int) -> None:
        results[rank] = run(cfg, tmp_path / "r", tmp_path / f"w{rank}", node_rank=rank, node_count=2)

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    first = results[0]
    calls = {"n": 0}
    real = prep.committed_metadata

    def not_yet_on_the_first_look(store):  # node 1 looked just before node 0 committed
        calls["n"] += 1
        return {} if calls["n"] == 1 else real(store)

    monkeypatch.setattr(prep, "committed_metadata", not_yet_on_the_first_look)
    late = run(cfg, tmp_path / "r", tmp_path / "w-late", node_rank=1, node_count=2)
    assert late.fingerprint == first.fingerprint and late.metadata == first.metadata
