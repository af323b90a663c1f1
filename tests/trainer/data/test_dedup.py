"""Deduplication (exact and MinHash), the report, and lanes of a compressed source, through prepare()."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from artifacts.manifest import MANIFEST_NAME, Manifest
from artifacts.store import open_store
from trainer.config import config_from_dict
from trainer.data import dedup, plan
from trainer.data import prepare as prep
from trainer.data.corpus import generate_corpus, planted_corpus
from trainer.data.pool import WorkerPool
from trainer.data.report import REPORT_NAME, report_lines
from trainer.data.shards import CACHE_PREFIX


def make_cfg(files, **data):
    section = {
        "train_files": [str(f) for f in files],
        "vocab_size": 300,
        "block_size": 32,
        "val_fraction": 0.1,
        "shard_bytes": 1 << 20,
        "tokenizer_sample_bytes": 20_000,
    }
    section.update(data)
    return config_from_dict({"data": section}, source="test.toml")


def run(cfg, run_uri, work: Path, **kw):
    kw.setdefault("workers", 1)
    return prep.prepare(cfg, str(run_uri), work, bar=False, **kw)


def committed(run_uri) -> tuple[Manifest, dict]:
    store = open_store(str(run_uri)).child(CACHE_PREFIX)
    return Manifest.from_json(store.get_bytes(MANIFEST_NAME)), json.loads(store.get_bytes(REPORT_NAME))


def write_planted(path: Path, docs: int = 120, **kw) -> list[tuple[str, int, str]]:
    corpus = planted_corpus(docs, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(text + "\n" for _, _, text in corpus))
    return corpus


def test_join_keeps_the_lowest_id_whatever_the_order() -> None:
    ids = np.array([9, 3, 7, 5, 1], dtype=np.uint64)
    keys = np.array([[1, 1], [2, 2], [1, 1], [2, 2], [3, 3]], dtype=np.uint64)
    edges = dedup.join_partition(ids, keys)
    assert sorted(map(tuple, edges.tolist())) == [(5, 3), (9, 7)]
    perm = np.array([4, 2, 0, 3, 1])
    members, labels = dedup.clusters(dedup.join_partition(ids[perm], keys[perm]))
    assert dict(zip(members.tolist(), labels.tolist(), strict=True)) == {3: 3, 5: 3, 7: 7, 9: 7}
    # a chain across bands (a~b in one band, b~c in another) is one cluster kept at its lowest id
    members, labels = dedup.clusters(np.array([[8, 4], [6, 4], [12, 8]], dtype=np.uint64))
    assert set(labels.tolist()) == {4} and dedup.dropped(members, labels).tolist() == [6, 8, 12]
    # stars (exact's edges) take the path without scipy and give what the graph gives
    stars = np.array([[9, 2], [5, 2], [7, 3], [4, 2], [9, 2]], dtype=np.uint64)  # 9~2 in two bands
    members, labels = dedup.clusters(stars)
    assert members.tolist() == [2, 4, 5, 9, 3, 7] and labels.tolist() == [2, 2, 2, 2, 3, 3]


def test_batched_signatures_are_datasketch_minhash_and_estimate_jaccard() -> None:
    from datasketch import MinHash

    for seed in (0, 42, 2**31 + 5):  # drawn without importing datasketch: the same draws
        ours, ref_perm = dedup.permutations(seed), MinHash(num_perm=112, seed=seed).permutations
        assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(ours, ref_perm, strict=True))
    hasher = dedup.MinHasher(dedup.permutations(42))
    texts = [t for _, _, t in planted_corpus(6, exact=0, near=0)] + ["Één, two!", "", "x " * 40_000]
    hashes, counts = hasher.shingle_hashes(texts)
    assert counts.tolist()[-3:] == [1, 1, 40_000 - 4]  # short documents are one padded 5-gram
    hasher.ROW_LIMIT = 64  # several groups and a document split into chunks
    sigs = hasher.signatures(hashes, counts)
    ends = np.cumsum(counts)
    for k, sig in enumerate(sigs):
        ref = MinHash(num_perm=112, seed=42, hashfunc=int)
        ref.update_batch(hashes[ends[k] - counts[k] : ends[k]].tolist())
        assert np.array_equal(ref.hashvalues, sig)
    base = texts[0]
    words = base.split(" ")
    words[10] = "zebra"
    a, b = hasher.signatures(*hasher.shingle_hashes([base, " ".join(words)]))
    assert 0.85 <= float(np.mean(a == b)) < 1.0  # one word in ~170 changed: Jaccard ≈ 0.95
    same = hasher.shingle_hashes(["The CAT, sat.", "the cat sat"])[0]
    assert same[0] == same[1]  # case and punctuation do not count
    keys = hasher.band_keys(np.stack([a, b]))
    assert keys.shape == (2, 14) and (keys[0] == keys[1]).sum() >= 1  # share a band: candidates


@pytest.mark.parametrize("gopher", [False, True])
def test_the_batched_scan_cleans_and_keys_lines_as_the_per_document_path(gopher: bool) -> None:
    from trainer.data.clean import CleanConfig, clean, clean_ascii_lines

    cfg = CleanConfig(min_chars=5, max_chars=60, gopher_repetition=gopher, gopher_symbol_ratio=gopher)
    lines = [b"The cat  sat\t on the mat.", b"", b"   ", b"tiny", b"  padded line here  ", b"x" * 61,
             b"a a a a a a a a a a a a a", b"# # # # # heading ###", b"Exactly five", b"The Cat sat, on the mat!",
             b"last line without a newline"]  # fmt: skip
    chunk = b"\n".join(lines)
    offsets, sizes, texts = clean_ascii_lines(chunk, cfg)
    ref, off = [], 0
    for i, raw in enumerate(lines):
        text, reason = clean(raw.decode().strip(), cfg)
        if text and reason is None:
            ref.append((off, len(raw) + (i < len(lines) - 1), text))
        off += len(raw) + 1
    assert [(o, n, t.decode()) for o, n, t in zip(offsets, sizes, texts, strict=True)] == ref
    assert len(ref) == (5 if gopher else 7)  # the filters drop the repetitive and the symbol line
    for t, (_, _, s) in zip(texts, ref, strict=True):
        assert dedup.exact_key(t) == dedup.exact_key(s) and dedup._word_crcs(t) == dedup._word_crcs(s)
    assert dedup.exact_key(b"a  b\tc") == dedup.exact_key("a b c")  # re-wrapped copies still match
    for other in ("caf\u00e9 au lait\n", "bell\x07 rings here\n", "crlf line here\r\n"):
        assert clean_ascii_lines(chunk + b"\n" + other.encode(), cfg) is None  # per-document path


def test_exact_removes_every_copy_keeps_one_and_reports_clusters(tmp_path: Path) -> None:
    src = tmp_path / "src" / "corpus.txt"
    corpus = write_planted(src, docs=120, exact=0.3, near=0.0)
    res = run(make_cfg([src]), tmp_path / "r", tmp_path / "w")
    manifest, report = committed(tmp_path / "r")
    n_exact = sum(k == "exact" for k, _, _ in corpus)
    assert report["documents_in"] == len(corpus)
    assert report["dropped"]["duplicate"]["documents"] == n_exact
    assert report["documents_out"] == len(corpus) - n_exact == res.metadata["docs"]
    # one survivor per original: the lowest id (first in corpus order) of each group
    first: dict[int, int] = {}
    for line, (_, origin, _) in enumerate(corpus):
        first.setdefault(origin, line)
    drops = {
        dedup.doc_id(0, d["offset"])
        for c in report["dedup"]["largest_clusters"]
        for d in c["documents"]
        if d["id"] != c["kept"]
    }
    assert drops  # the largest clusters name their members by id, source and offset
    top = report["dedup"]["largest_clusters"][0]
    assert top["size"] == max(sum(o == origin for _, o, _ in corpus) for origin in first)
    assert top["kept"] == min(d["id"] for d in top["documents"])
    assert all(set(d) == {"id", "source", "offset"} for d in top["documents"])  # never text
    assert {f.path for f in manifest.files} >= {REPORT_NAME}
    assert set(report["seconds"]) >= {"dedup_scan", "dedup_join", "tokenizing"}
    lines = report_lines(report)
    assert any(f"duplicate {n_exact}" in ln for ln in lines)
    # keys were only needed until the commit
    assert not list((tmp_path / "r" / CACHE_PREFIX).glob("_dedup/*/*"))


def test_minhash_removes_near_copies_exact_does_not(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src" / "corpus.txt"
    corpus = write_planted(src, docs=120, exact=0.1, near=0.2)
    n_exact = sum(k == "exact" for k, _, _ in corpus)
    n_near = sum(k == "near" for k, _, _ in corpus)
    a = run(make_cfg([src]), tmp_path / "re", tmp_path / "we")
    monkeypatch.setattr("trainer.data.deduplicate.PARTITION_BYTES", 60_000)  # several partitions
    b = run(make_cfg([src], dedup="minhash"), tmp_path / "rm", tmp_path / "wm", workers=2)  # joined in the pool
    _, exact_report = committed(tmp_path / "re")
    _, minhash_report = committed(tmp_path / "rm")
    assert exact_report["dropped"]["duplicate"]["documents"] == n_exact
    removed = minhash_report["dropped"]["duplicate"]["documents"]
    assert n_exact + 0.95 * n_near <= removed <= n_exact + n_near
    assert a.fingerprint != b.fingerprint and minhash_report["dedup"]["partitions"] > 1
    assert minhash_report["dedup"]["bands"] == 14 and minhash_report["settings"]["dedup"] == "minhash"
    monkeypatch.setattr("trainer.data.deduplicate.PARTITION_BYTES", 1 << 40)  # one partition, joined here
    monkeypatch.setattr("trainer.data.deduplicate.RELEASE_TEXT", 0)  # the pool shut down for it, respawned
    released = []
    monkeypatch.setattr(WorkerPool, "release", lambda self, real=WorkerPool.release: released.append(
        self._pool is not None) or real(self))  # fmt: skip
    # byte-range units, so the scan runs in the two worker processes
    c = run(make_cfg([src], dedup="minhash", shard_bytes=8192), tmp_path / "r1", tmp_path / "w1", workers=2)
    _, one_report = committed(tmp_path / "r1")
    assert released == [True] and one_report["dedup"]["partitions"] == 1
    assert one_report["dropped"] == minhash_report["dropped"] and c.metadata["docs"] == b.metadata["docs"]


def test_validation_is_chosen_after_dedup(tmp_path: Path) -> None:
    """Every copy of a document is removed before the split: no validation text is in training."""
    src = tmp_path / "src" / "corpus.txt"
    write_planted(src, docs=150, exact=0.5, near=0.0)
    r = tmp_path / "r"
    res = run(make_cfg([src], val_fraction=0.3), r, tmp_path / "w")
    store = open_store(str(r)).child(CACHE_PREFIX)
    meta = res.metadata

    def docs(split: str) -> set[tuple[int, ...]]:
        out = set()
        for p, _ in meta[split]:
            a = np.frombuffer(store.get_bytes(p), dtype=meta["dtype"])
            out |= {tuple(d.tolist()) for d in np.split(a, np.flatnonzero(a == meta["eos_token_id"]) + 1) if d.size > 1}
        return out

    val, train = docs("val"), docs("train")
    assert val and train and not val & train


def test_two_node_ranks_agree_with_one_node(tmp_path: Path, monkeypatch) -> None:
    from trainer.data import shards

    d = tmp_path / "corpus"
    corpus = planted_corpus(160, exact=0.25, near=0.1)
    half = len(corpus) // 2
    d.mkdir()
    (d / "a.txt").write_text("".join(t + "\n" for _, _, t in corpus[:half]))
    (d / "b.txt").write_text("".join(t + "\n" for _, _, t in corpus[half:]))  # copies across files
    cfg = make_cfg([d], dedup="minhash")
    single = run(cfg, tmp_path / "one", tmp_path / "w-one")
    monkeypatch.setattr(shards, "POLL_S", 0.05)
    monkeypatch.setattr("trainer.data.deduplicate.PARTITION_BYTES", 50_000)  # several partitions
    results: dict[int, object] = {}

    def node(rank: int) -> None:
        try:
            results[rank] = run(cfg, tmp_path / "two", tmp_path / f"w{rank}", node_rank=rank, node_count=2)
        except BaseException as err:  # surfaced by the assertion below
            results[rank] = err

    threads = [threading.Thread(target=node, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not isinstance(r, BaseException) for r in results.values()), results
    (m1, r1), (m2, r2) = committed(tmp_path / "one"), committed(tmp_path / "two")
    assert r2["dedup"]["partitions"] > 1 and r1["dedup"]["partitions"] == 1
    for key in ("documents_out", "dropped"):
        assert r1[key] == r2[key]
    assert r1["dedup"]["largest_clusters"] == r2["dedup"]["largest_clusters"]
    shas = lambda m: [(f.path, f.sha256) for f in m.files if f.path != REPORT_NAME]  # noqa: E731
    assert shas(m1) == shas(m2) and results[0].fingerprint == single.fingerprint


def test_cleaning_and_dedup_settings_are_in_the_fingerprint(tmp_path: Path) -> None:
    src = tmp_path / "src" / "c.txt"
    src.parent.mkdir()
    src.write_text(generate_corpus(20_000, seed=3) + "ok\n")
    a = run(make_cfg([src]), tmp_path / "r", tmp_path / "w")
    assert run(make_cfg([src]), tmp_path / "r", tmp_path / "w").reused
    b = run(make_cfg([src], dedup="off"), tmp_path / "r", tmp_path / "w")
    c = run(make_cfg([src], dedup="off", clean={"min_chars": 10}), tmp_path / "r", tmp_path / "w")
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3 and not (b.reused or c.reused)
    _, report = committed(tmp_path / "r")
    assert report["dropped"]["too_short"]["documents"] == 1  # "ok"
    assert report["dedup"] == {"mode": "off"} and report["settings"]["clean"]["min_chars"] == 10


def test_bad_dedup_or_clean_keys_are_one_line_errors(tmp_path: Path) -> None:
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match=r"data\.dedup: must be one of exact, minhash, off"):
        make_cfg(["x"], dedup="fuzzy")
    with pytest.raises(TrainerError, match=r"data\.clean\.max_chars: must be >= data\.clean\.min_chars"):
        make_cfg(["x"], clean={"min_chars": 50, "max_chars": 10})
    with pytest.raises(TrainerError, match=r"data\.clean\.min_chr"):
        make_cfg(["x"], clean={"min_chr": 5})


def test_a_compressed_source_is_split_into_lanes_across_workers(tmp_path: Path) -> None:
    import zstandard

    text = generate_corpus(120_000, seed=9)
    src = tmp_path / "src" / "big.txt.zst"
    src.parent.mkdir()
    src.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    plain = tmp_path / "src" / "big.txt"
    plain.write_text(text)
    cfg = make_cfg([src], shard_bytes=8192)
    sources = prep.config_sources(cfg.data, cfg.source, None, tmp_path / "w")
    units = [u for _, u in plan.all_units(sources, 8192)]
    assert len(units) >= 2 and {u.lanes for u in units} == {len(units)}
    per_node = [plan.plan_units(sources, 8192, r, 2) for r in (0, 1)]
    assert per_node[0] and per_node[1]  # on a cluster the lanes of one file go to both nodes
    res = run(cfg, tmp_path / "r", tmp_path / "w", workers=2)
    ref = run(make_cfg([plain], shard_bytes=8192), tmp_path / "r2", tmp_path / "w2")
    n_docs = sum(1 for ln in text.splitlines() if ln.strip())
    assert res.metadata["docs"] == ref.metadata["docs"] == n_docs  # every line once, none twice
    total = lambda m: m["train_tokens"] + m["val_tokens"]  # noqa: E731
    assert total(res.metadata) == total(ref.metadata)
    markers = {json.loads(p.read_text())["unit"] for p in (tmp_path / "r" / CACHE_PREFIX).glob("_parts/*/u*.json")}
    assert markers == {u.index for u in units}  # every lane committed its own shards


def test_lanes_seek_their_blocks_of_one_decompressed_copy(tmp_path: Path) -> None:
    import zstandard

    from trainer.data.reading import BadInput, fetch_plain, iter_docs
    from trainer.data.sources import Source, resolve_sources

    text = generate_corpus(50_000, seed=3)
    src_path = tmp_path / "big.txt.zst"
    src_path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    (src,) = resolve_sources((str(src_path),), base=tmp_path, run=None, where="t")
    path, comp = fetch_plain(src, tmp_path / "s", 3)
    assert comp == "" and path.read_bytes() == text.encode()  # decompressed once per node
    assert fetch_plain(src, tmp_path / "s", 3)[0] == path
    assert fetch_plain(src, tmp_path / "s", 1) == (src_path, "zst")  # one lane streams it
    stream = [(d.text, d.offset) for d in iter_docs(src_path, src) if not isinstance(d, int)]
    lanes = [
        [(d.text, d.offset) for d in iter_docs(path, src, lanes=3, lane=k, lane_block=4096, compression=comp)
         if not isinstance(d, int)]
        for k in range(3)
    ]  # fmt: skip
    assert all(lanes) and sorted(sum(lanes, [])) == sorted(stream)  # every document once
    assert {off // 4096 % 3 for _, off in lanes[1]} == {1}  # a lane keeps the lines starting in its blocks
    bad = text.encode().split(b"\n")
    bad[150] = b"caf\xe9"
    src_path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(bad)))
    src = Source(src.name, src.uri, src_path.stat().st_size, "sha256:changed")  # past the sniff
    path, comp = fetch_plain(src, tmp_path / "s", 3)
    with pytest.raises(BadInput, match=r"big.txt.zst:151: not UTF-8"):  # the line in the whole file
        for k in range(3):
            list(iter_docs(path, src, lanes=3, lane=k, lane_block=4096, compression=comp))


def test_the_lanes_of_an_s3_object_share_one_download_per_node(tmp_path: Path, monkeypatch) -> None:
    import boto3
    import zstandard
    from moto import mock_aws

    from artifacts.s3 import S3Store

    text = generate_corpus(60_000, seed=4)
    downloads: list[str] = []
    real = S3Store.download_file
    monkeypatch.setattr(
        S3Store, "download_file", lambda self, key, path, **kw: downloads.append(key) or real(self, key, path, **kw)
    )
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpus")
        s3.put_object(Bucket="corpus", Key="c/all.txt.zst", Body=zstandard.ZstdCompressor().compress(text.encode()))
        cfg = make_cfg(["s3://corpus/c/"], shard_bytes=8192)
        sources = prep.config_sources(cfg.data, cfg.source, None, tmp_path / "w")
        assert len(plan.all_units(sources, 8192)) >= 2  # several lanes of one object
        res = run(cfg, tmp_path / "r", tmp_path / "w")
    assert downloads == ["all.txt.zst"]  # tokenizer sample, dedup scan and every lane: one download
    assert res.metadata["docs"] == sum(1 for ln in text.splitlines() if ln.strip())
    assert not (tmp_path / "w" / "prepare" / "sources").exists()  # removed when preparation ends


def test_invoke_prepare_data_prints_the_report(tmp_path: Path, capsys) -> None:
    from trainer.cli import prepare_data

    src = tmp_path / "src" / "corpus.txt"
    corpus = write_planted(src, docs=60, exact=0.5, near=0.0)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[run]\nname = "t"\nscratch_dir = "{tmp_path / "scratch"}"\n'
        f'[data]\ntrain_files = ["{src}"]\nvocab_size = 300\nblock_size = 32\nval_fraction = 0.1\n'
        "tokenizer_sample_bytes = 20000\n"
    )
    for verb in ("committed", "reused"):
        prepare_data.body(None, config=str(recipe), run=str(tmp_path / "run"), workers=1)
        out = capsys.readouterr().out
        n_exact = sum(k == "exact" for k, _, _ in corpus)
        assert out.startswith(verb)
        assert f"documents: {len(corpus):,} in, {len(corpus) - n_exact:,} out" in out
        assert f"dropped: duplicate {n_exact}" in out and "dedup (exact):" in out
        assert f"report: {tmp_path / 'run'}" in out and "DATA_REPORT.json" in out


def test_invoke_status_names_the_preparation_stage() -> None:
    from trainer.launch.lifecycle import data_prep_line

    scan = {"stage": "dedup-scan", "bytes_done": 5e8, "bytes_total": 1e9, "mb_per_s": 40.0, "eta_s": 600}
    assert data_prep_line(scan).startswith("preparing data (dedup scan): 50.0% of 1.00 GB")
    assert "joining" in data_prep_line({"stage": "dedup-join"})
    assert data_prep_line({**scan, "stage": "tokenizing"}).startswith("preparing data (tokenizing)")
    assert "tokenizer" in data_prep_line({"stage": "tokenizer"})
