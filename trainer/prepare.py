"""``prepare-data``: corpus → tokenizer → token shards in ``<run>/cache/data/``, committed by a manifest.

Its own step, run before any training collective exists (``invoke prepare-data``, ``invoke
pretrain``, or the trainer itself before ``torch.distributed`` starts; ``python -m
trainer.prepare`` on a node). Steps:

1. Resolve the sources and their content identities; the fingerprint hashes them with every
   setting that changes the tokens (not ``block_size``: blocks are cut when training reads).
   A committed cache with the same fingerprint is reused as it is.
2. Tokenizer: an existing folder (``data.tokenizer``), or a byte-level BPE trained on at most
   ``data.tokenizer_sample_bytes`` of text (sources in a seeded order, each from its start).
   Node 0 commits it under ``<fp>/tokenizer/``; other nodes wait for its marker.
3. Units (a source, or a ~4-shard byte range of a big uncompressed local file) go to worker
   processes (:mod:`trainer.tokenize_worker`); on a cluster, node ``r`` of ``n`` takes the sources
   ``i`` with ``i % n == r``. Each shard is uploaded and then committed by a marker, so a relaunch
   redoes at most one shard per unit.
4. Node 0 waits for every unit's last marker, checks the corpus is big enough, and writes
   ``MANIFEST.json`` last (every shard and tokenizer file with size and SHA-256; the shard index
   in its metadata). Bad input stops every node with one line naming the file and line; nothing
   is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.run import Run, RunState
from trainer.config import TrainerConfig
from trainer.errors import TrainerError
from trainer.sources import Source, iter_docs, resolve_sources
from trainer.tokenize_worker import Job, Unit

log = logging.getLogger(__name__)

CACHE_PREFIX = Run.CACHE_DATA
EOS_TOKEN = "<|endoftext|>"
FORMAT = "twostage-token-shards/1"
TOKENIZER_MARKER = "tokenizer.json"
FAILED_MARKER = "FAILED"
UNIT_SHARDS = 4  # a byte-range unit holds about this many shards of text
STATUS_EVERY_S = 10.0
POLL_S = 2.0


@dataclass(frozen=True)
class Prepared:
    """A committed cache: where it is and what its manifest says."""

    cache_uri: str
    fingerprint: str
    metadata: dict[str, Any]
    reused: bool


def fingerprint(cfg: TrainerConfig, sources: list[Source], tokenizer_identity: str) -> str:
    """What the shards depend on: content identities and the settings that change tokens or splits."""
    d = cfg.data
    payload = {
        "format": FORMAT,
        "seed": cfg.run.seed,
        "val_fraction": d.val_fraction,
        "vocab_size": d.vocab_size,
        "tokenizer": tokenizer_identity,
        "tokenizer_sample_bytes": d.tokenizer_sample_bytes,
        "shard_bytes": d.shard_bytes,
        "sources": [s.identity for s in sources],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def all_units(sources: list[Source], shard_bytes: int) -> list[tuple[int, Unit]]:
    """Every unit of the corpus as (source index, unit), numbered the same way on every node."""
    span = shard_bytes * UNIT_SHARDS
    units: list[tuple[int, Unit]] = []
    for i, src in enumerate(sources):
        ranges = [(0, -1)]
        if src.local and not src.compression and src.size > span:
            cuts = list(range(0, src.size, span))
            ranges = [
                (a, b if b < src.size else -1)
                for a, b in zip(cuts, cuts[1:] + [src.size], strict=True)
            ]
        units += [(i, Unit(len(units) + k, src, a, b)) for k, (a, b) in enumerate(ranges)]
    return units


def plan_units(
    sources: list[Source], shard_bytes: int, node_rank: int, node_count: int
) -> list[Unit]:
    """This node's units: those of the sources ``i`` with ``i % node_count == node_rank``."""
    return [u for i, u in all_units(sources, shard_bytes) if i % node_count == node_rank]


# -- the tokenizer ---------------------------------------------------------------------------


def _sample(sources: list[Source], budget: int, seed: int, scratch: Path) -> Any:
    """Texts for tokenizer training: sources in a seeded order, each from its start, ``budget`` bytes."""
    import random

    from trainer.sources import BadInput, Doc, fetch_local

    order = list(sources)
    random.Random(seed).shuffle(order)
    used = 0
    for src in order:
        path = fetch_local(src, scratch / "prepare" / "sources")  # the workers look there too
        try:
            for item in iter_docs(path, src):
                if isinstance(item, Doc):
                    yield item.text
                    used += item.nbytes
                    if used >= budget:
                        return
        except BadInput as err:
            raise TrainerError(str(err)) from None


def build_tokenizer(cfg: TrainerConfig, sources: list[Source], out: Path, scratch: Path) -> None:
    """Train a byte-level BPE on a bounded sample (or copy ``data.tokenizer``) into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    if cfg.data.tokenizer:
        from trainer.data import local_folder

        src = local_folder(cfg.data.tokenizer, scratch, "tokenizer-src")
        out.mkdir(parents=True)
        for f in sorted(src.iterdir()):  # copied as they are: no transformers import here
            if f.is_file() and f.name != "MANIFEST.json" and not f.name.endswith(".sig"):
                shutil.copy2(f, out / f.name)
        return
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _sample(sources, cfg.data.tokenizer_sample_bytes, cfg.run.seed, scratch),
        vocab_size=cfg.data.vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tok.save_pretrained(out)


def tokenizer_facts(folder: Path) -> tuple[int, int]:
    """(EOS id, vocabulary size incl. added tokens) from a fast tokenizer folder, without transformers."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos_name: Any = EOS_TOKEN
    config = folder / "tokenizer_config.json"
    if config.is_file():
        eos_name = json.loads(config.read_text()).get("eos_token") or EOS_TOKEN
    if isinstance(eos_name, dict):
        eos_name = eos_name.get("content", EOS_TOKEN)
    eos = tok.token_to_id(str(eos_name))
    if eos is None:
        raise TrainerError(
            f"tokenizer {folder}: no eos token ({eos_name!r}); set eos_token in tokenizer_config.json"
        )
    return eos, tok.get_vocab_size(with_added_tokens=True)


def tokenizer_identity(cfg: TrainerConfig, scratch: Path) -> str:
    """Content identity of an existing tokenizer (its ``tokenizer.json``), or how one is trained."""
    if not cfg.data.tokenizer:
        return "bpe-trained"
    from trainer.data import local_folder

    folder = local_folder(cfg.data.tokenizer, scratch, "tokenizer-src")
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TrainerError(
            f"data.tokenizer {cfg.data.tokenizer}: no tokenizer.json (a fast tokenizer is needed)"
        )
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- progress --------------------------------------------------------------------------------


def status_writer(run: Run, node_count: int) -> Any:
    """The writer of the run's status while data is prepared (not a launch: none is recorded)."""
    from trainer.finish import StatusWriter

    return StatusWriter(run, enabled=True, node_count=node_count, launch=False)


def record_status(writer: Any, progress: dict[str, Any]) -> None:
    """The run's status says it is preparing data and how far (what `invoke status` shows)."""
    writer.write(RunState.PREPARING, data_prep=progress)


class Progress:
    """A bar with MB/s, tokens/s and ETA on a terminal; a log line every 30 s and STATUS.json every 10 s."""

    def __init__(self, total: int, status: Any, bar: bool) -> None:
        """``status``: a :func:`status_writer` (node 0), or None (no status writes)."""
        from tqdm.auto import tqdm

        self.total, self.done, self.tokens = total, 0, 0
        self.started = self._last_log = self._last_status = time.monotonic()
        self.status = status
        self.bar = tqdm(
            total=total, desc="prepare-data", unit="B", unit_scale=True, unit_divisor=1024,
            disable=None if bar else True, leave=False,
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        return {
            "stage": "tokenizing",
            "bytes_done": self.done,
            "bytes_total": self.total,
            "tokens": self.tokens,
            "mb_per_s": round(rate / 1e6, 3),
            "tokens_per_s": round(self.tokens / elapsed),
            "eta_s": round((self.total - self.done) / rate) if rate > 0 else None,
        }

    def advance(self, nbytes: int, ntokens: int) -> None:
        self.done += nbytes
        self.tokens += ntokens
        self.bar.update(nbytes)
        now = time.monotonic()
        snap = None
        if now - self._last_log >= 30:
            snap = self.snapshot()
            log.info(
                "data: %.1f%% of %.1f MB, %.2f MB/s, %d tokens/s, ETA %s s",
                100 * self.done / max(self.total, 1), self.total / 1e6, snap["mb_per_s"],
                snap["tokens_per_s"], snap["eta_s"],
            )  # fmt: skip
            self._last_log = now
        if now - self._last_status >= 5:
            snap = snap or self.snapshot()
            self.bar.set_postfix_str(f"{snap['tokens_per_s'] / 1e3:.0f}k tok/s", refresh=False)
        if self.status is not None and now - self._last_status >= STATUS_EVERY_S:
            record_status(self.status, snap or self.snapshot())
            self._last_status = now

    def close(self) -> None:
        self.bar.close()


# -- orchestration ---------------------------------------------------------------------------


def _markers(store: Any, fp: str) -> dict[tuple[int, int], dict[str, Any]]:
    out = {}
    for obj in store.list(f"_parts/{fp}"):
        name = obj.key.rsplit("/", 1)[-1]
        if name.startswith("u") and name.endswith(".json"):
            m = json.loads(store.get_bytes(obj.key))
            out[(int(m["unit"]), int(m["part"]))] = m
    return out


def _resume_point(
    markers: dict[tuple[int, int], dict[str, Any]], unit: int
) -> tuple[bool, int, int]:
    """(done, next part, byte offset to skip to) of a unit from its committed markers."""
    parts = sorted(p for (u, p) in markers if u == unit)
    if not parts:
        return False, 0, 0
    last = markers[(unit, parts[-1])]
    return bool(last["done"]), parts[-1] + 1, int(last["end_offset"])


def _clean_stale(store: Any, fp: str) -> None:
    """Drop a manifest for other settings first (it must never pair with new shards), then its files."""
    from artifacts.manifest import MANIFEST_NAME

    if store.exists(MANIFEST_NAME):
        store.delete([MANIFEST_NAME])
    stale = [
        o.key
        for o in store.list()
        if not (o.key.startswith(f"{fp}/") or o.key.startswith(f"_parts/{fp}/"))
    ]
    store.delete(stale)
    store.delete([o.key for o in store.list(f"_parts/{fp}") if o.key.endswith(FAILED_MARKER)])


def _fail(store: Any, fp: str, message: str, single_node: bool) -> TrainerError:
    """Record the failure for waiting ranks/nodes; on one node also drop this attempt's shards."""
    if single_node:
        store.delete([o.key for o in store.list(fp)])
        store.delete([o.key for o in store.list(f"_parts/{fp}")])
    store.put_bytes(f"_parts/{fp}/{FAILED_MARKER}", message.encode())
    return TrainerError(message)


def _wait_for(store: Any, key: str, fp: str, since: float, what: str) -> None:
    """Poll the store until ``key`` exists; a FAILED marker newer than ``since`` stops the wait."""
    while not store.exists(key):
        _wait_for_any(store, fp, since, what)


def _run_units(jobs: list[Job], workers: int, progress: Progress) -> list[str]:
    """Run the jobs (in-process for one worker, else a spawn pool); returns bad-input messages."""
    from trainer.tokenize_worker import init_worker, run_job, run_job_checked

    errors: list[str] = []
    if workers <= 1 or len(jobs) <= 1:
        from trainer.sources import BadInput

        for job in jobs:
            try:
                run_job(job, progress.advance)
            except BadInput as err:
                errors.append(str(err))
                break
        return errors
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process whose tokenizer threads already ran
    q = ctx.Queue()
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=init_worker, initargs=(q,)
    ) as pool:
        pending = {pool.submit(run_job_checked, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    if result and "error" in result[0]:
                        errors.append(result[0]["error"])
                while True:
                    try:
                        progress.advance(*q.get_nowait())
                    except queue_mod.Empty:
                        break
                if errors:
                    _stop(pool)
                    break
        except BaseException:
            _stop(pool)  # Ctrl-C: committed shards stay, the unit in flight is redone next time
            raise
    return errors


def _stop(pool: Any) -> None:
    """Cancel queued units and end the running ones now (a big unit could run for minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def prepare(
    cfg: TrainerConfig,
    run: Run | str,
    scratch: Path,
    *,
    workers: int = 0,
    node_rank: int = 0,
    node_count: int = 1,
    bar: bool = True,
) -> Prepared:
    """Build (or reuse, or finish) the committed token-shard cache of ``run``; see the module doc."""
    from artifacts.store import open_store

    since = time.time()
    run = Run(run) if isinstance(run, str) else run
    if not 0 <= node_rank < node_count:
        raise TrainerError(f"--node-rank {node_rank} must be in [0, --node-count {node_count})")
    sources = config_sources(cfg, run, scratch)
    fp = fingerprint(cfg, sources, tokenizer_identity(cfg, scratch))[:16]
    cache_uri = run.cache_data_uri
    store = open_store(cache_uri)
    existing = _committed_metadata(store)
    if existing.get("fingerprint") == fp:
        log.info("data: reusing %s (%d train tokens)", cache_uri, existing.get("train_tokens", 0))
        return Prepared(cache_uri, fp, existing, reused=True)
    lead = node_rank == 0
    writer = status_writer(run, node_count) if lead else None
    try:
        return _build(
            cfg, run, scratch, sources, fp, store, existing, writer,
            workers=workers, node_rank=node_rank, node_count=node_count, bar=bar, since=since,
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close(timeout=60)


def _build(
    cfg: TrainerConfig,
    run: Run,
    scratch: Path,
    sources: list[Source],
    fp: str,
    store: Any,
    existing: dict[str, Any],
    writer: Any,
    *,
    workers: int,
    node_rank: int,
    node_count: int,
    bar: bool,
    since: float,
) -> Prepared:
    """:func:`prepare` past the reuse check: tokenizer, units, manifest (node 0 writes ``writer``)."""
    from artifacts.manifest import MANIFEST_NAME, FileEntry, Manifest

    cache_uri = run.cache_data_uri
    lead = node_rank == 0
    if lead:
        if existing:
            log.info("data: %s was prepared from other data or settings; rebuilding", cache_uri)
        _clean_stale(store, fp)
    tok_dir = scratch / "prepare" / fp / "tokenizer"
    tok_marker = f"_parts/{fp}/{TOKENIZER_MARKER}"
    if lead and not store.exists(tok_marker):
        t0 = time.monotonic()
        record_status(writer, {"stage": "tokenizer", "bytes_done": 0, "bytes_total": 0})
        build_tokenizer(cfg, sources, tok_dir, scratch)
        entries = [
            store.upload_file(f, f"{fp}/tokenizer/{f.name}").to_dict()
            for f in sorted(tok_dir.iterdir())
        ]
        store.put_bytes(tok_marker, json.dumps({"files": entries}).encode())
        log.info("data: tokenizer ready in %.1f s", time.monotonic() - t0)
    else:
        _wait_for(store, tok_marker, fp, since, "node 0's tokenizer")
    tok_files = json.loads(store.get_bytes(tok_marker))["files"]
    if not (tok_dir / "tokenizer.json").is_file():
        for e in tok_files:
            store.download_file(e["path"], tok_dir / Path(e["path"]).name)
    eos, vocab = tokenizer_facts(tok_dir)
    dtype = "uint16" if vocab <= 65535 else "uint32"
    width = 2 if dtype == "uint16" else 4
    markers = _markers(store, fp)
    units = plan_units(sources, cfg.data.shard_bytes, node_rank, node_count)
    jobs, redo_bytes = [], 0
    for u in units:
        done, part, skip = _resume_point(markers, u.index)
        if done:
            continue
        jobs.append(
            Job(u, str(tok_dir / "tokenizer.json"), eos, dtype, max(1, cfg.data.shard_bytes // width),
                cfg.run.seed, cfg.data.val_fraction, cache_uri, fp, str(scratch / "prepare"), part, skip)
        )  # fmt: skip
        redo_bytes += u.nbytes
    n_workers = workers or cfg.data.workers or os.cpu_count() or 1
    log.info(
        "data: %d source(s), %d unit(s) on this node, %d to do (%.1f MB), %d worker(s), cache %s",
        len(sources), len(units), len(jobs), redo_bytes / 1e6, n_workers, cache_uri,
    )  # fmt: skip
    progress = Progress(redo_bytes, writer, bar=bar)
    try:
        errors = _run_units(jobs, n_workers, progress)
    finally:
        progress.close()
    if errors:
        raise _fail(store, fp, errors[0], node_count == 1)
    if not lead:
        while _committed_metadata(store).get("fingerprint") != fp:  # not an older run's manifest
            _wait_for_any(store, fp, since, "node 0 to commit the manifest")
        return Prepared(cache_uri, fp, _committed_metadata(store), reused=False)
    every = [u for _, u in all_units(sources, cfg.data.shard_bytes)]
    while True:
        markers = _markers(store, fp)
        missing = [u.index for u in every if not _resume_point(markers, u.index)[0]]
        if not missing:
            break
        _wait_for_any(store, fp, since, f"{len(missing)} unit(s) of other nodes")
    meta, files = _index(markers, every, fp, dtype, eos, vocab, sources)
    try:
        check_size(meta, cfg.data.block_size, where=cfg.source or "data")
    except TrainerError as err:
        raise _fail(store, fp, str(err), node_count == 1) from None
    entries = [FileEntry(e["path"], e["size"], e["sha256"]) for e in tok_files] + files
    meta["tokenizer"] = f"{fp}/tokenizer"
    store.put_bytes(MANIFEST_NAME, Manifest(files=entries, metadata=meta).to_json())
    if writer is not None:
        record_status(writer, {**progress.snapshot(), "stage": "committed"})
    log.info(
        "data: committed %s: %d train / %d val tokens in %d+%d shards",
        cache_uri, meta["train_tokens"], meta["val_tokens"], len(meta["train"]), len(meta["val"]),
    )  # fmt: skip
    return Prepared(cache_uri, fp, meta, reused=False)


def _wait_for_any(store: Any, fp: str, since: float, what: str) -> None:
    """One poll of a wait for ``what``: raise a FAILED marker newer than ``since``, else sleep."""
    for o in store.list(f"_parts/{fp}"):
        if o.key.endswith(FAILED_MARKER) and o.mtime >= since - 5:
            raise TrainerError(store.get_bytes(o.key).decode())
    log.info("data: waiting for %s", what)
    time.sleep(POLL_S)


def _committed_metadata(store: Any) -> dict[str, Any]:
    from artifacts.errors import ArtifactError
    from artifacts.manifest import MANIFEST_NAME, Manifest

    if not store.exists(MANIFEST_NAME):
        return {}
    try:
        meta = Manifest.from_json(store.get_bytes(MANIFEST_NAME)).metadata
    except ArtifactError:
        return {}
    return meta if meta.get("format") == FORMAT else {}


def _index(
    markers: dict,
    every: list[Unit],
    fp: str,
    dtype: str,
    eos: int,
    vocab: int,
    sources: list[Source],
):
    """Manifest metadata (the shard index, in unit/part order) and file entries."""
    from artifacts.manifest import FileEntry

    train, val, files = [], [], []
    docs = 0
    for u in every:
        for key in sorted(k for k in markers if k[0] == u.index):
            m = markers[key]
            docs += int(m["docs"])
            for split, lst in (("train", train), ("val", val)):
                if m[split]:
                    lst.append([m[split]["path"], int(m[split]["tokens"])])
                    files.append(FileEntry(m[split]["path"], m[split]["size"], m[split]["sha256"]))
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "dtype": dtype,
        "eos_token_id": eos,
        "vocab_size": vocab,
        "docs": docs,
        "train_tokens": sum(t for _, t in train),
        "val_tokens": sum(t for _, t in val),
        "train": train,
        "val": val,
        "sources": [{"name": s.name, "identity": s.identity, "size": s.size} for s in sources],
    }
    return meta, files


def check_size(meta: dict[str, Any], block_size: int, where: str) -> None:
    """At least 4 training blocks and 1 validation block of ``block_size`` (blocks never span shards)."""
    n_train = sum(t // block_size for _, t in meta["train"])
    n_val = sum(t // block_size for _, t in meta["val"])
    if meta["docs"] == 0:
        names = ", ".join(s["name"] for s in meta["sources"][:3])
        raise TrainerError(
            f"{where}: the corpus holds no text ({names}); add text files to data.train_files"
        )
    if n_train < 4 or n_val < 1:
        raise TrainerError(
            f"{where}: corpus too small: {meta['train_tokens']} train / {meta['val_tokens']} validation "
            f"tokens make {n_train} train / {n_val} validation blocks of {block_size} "
            "(need >= 4 and >= 1); add text, lower data.block_size or raise data.val_fraction"
        )


def config_sources(cfg: TrainerConfig, run: Run | None, scratch: Path) -> list[Source]:
    """The recipe's sources; the generated corpus is written once into ``scratch``."""
    if cfg.data.generated_corpus:
        from trainer.corpus import write_corpus

        path = scratch / "sources" / f"generated-{cfg.data.generated_corpus_bytes}.txt"
        if not path.exists():
            write_corpus(path, cfg.data.generated_corpus_bytes)
        files: tuple[str, ...] = (str(path),)
    else:
        files = cfg.data.train_files
    base = Path(cfg.source).parent if cfg.source else Path.cwd()
    return resolve_sources(
        files,
        base=base,
        run=run,
        where=cfg.source or "data",
        hash_cache=scratch / "source-hashes.json",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.prepare --config FILE --run URI [--workers N] [--node-rank R --node-count N]``."""
    import argparse

    from artifacts.errors import UserError
    from artifacts.logs import init_logging

    p = argparse.ArgumentParser(
        prog="python -m trainer.prepare", description=__doc__.splitlines()[0]
    )
    p.add_argument("--config", required=True)
    p.add_argument("--run", "--run-uri", dest="run", default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--node-count", type=int, default=1)
    args = p.parse_args(argv)
    init_logging()
    try:
        run_uri, _ = run_prepare(
            args.config, args.run, args.workers, args.node_rank, args.node_count
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def run_prepare(
    config: str | Path, run: str | None, workers: int = 0, node_rank: int = 0, node_count: int = 1
) -> tuple[str, Prepared]:
    """Load the recipe, pick the run prefix and scratch folder the trainer will use, prepare."""
    from trainer.config import load_config
    from trainer.env import run_uri as resolve_run_uri
    from trainer.env import scratch_dir

    cfg = load_config(config)
    if workers < 0:
        raise TrainerError(f"--workers must be >= 0, got {workers}")
    run_uri = resolve_run_uri(cfg.run, run)
    return run_uri, prepare(
        cfg,
        Run(run_uri),
        scratch_dir(cfg.run, Run(run_uri)),
        workers=workers,
        node_rank=node_rank,
        node_count=node_count,
    )


if __name__ == "__main__":
    sys.exit(main())
