"""Text → tokenizer → packed fixed-length blocks → train/validation split, cached in the run prefix.

Global rank 0 builds (or finds) the cache ``<run>/cache/data/`` — tokenizer files, ``train.npy``,
``val.npy`` and a manifest whose metadata holds a fingerprint of the data config and sources — and
commits it with a manifest; every other node's local rank 0 then downloads it once (verified) into
node-local scratch, while the remaining ranks wait at a barrier. A resumed run or a second node
never re-tokenizes. The tokenizer is a byte-level BPE trained locally with ``tokenizers`` (or an
existing tokenizer folder); nothing is fetched from a hub.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from artifacts.run import RUN_REF, Run
from trainer.config import TrainerConfig
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedData:
    """A local, verified data cache folder."""

    root: Path
    """Folder holding the tokenizer files, ``train.npy`` and ``val.npy``."""
    fingerprint: str
    """Hash of what produced it (data config + sources)."""

    @property
    def train_path(self) -> Path:
        return self.root / "train.npy"

    @property
    def val_path(self) -> Path:
        return self.root / "val.npy"


# -- sources ---------------------------------------------------------------------------------


def _is_uri(spec: str) -> bool:
    return "://" in spec


def resolve_sources(cfg: TrainerConfig, workdir: Path, run: Run | None = None) -> list[Path]:
    """Local text files for the run: the generated corpus, local globs, or store URIs (downloaded).

    An entry ``run:REL`` is ``REL`` under the run prefix (e.g. ``run:data/``, where
    ``invoke pretrain`` uploads a corpus).
    """
    if cfg.data.generated_corpus:
        from trainer.corpus import write_corpus

        path = workdir / "sources" / "generated.txt"
        if not path.exists():
            write_corpus(path, cfg.data.generated_corpus_bytes)
        return [path]
    from artifacts.store import open_store

    files: list[Path] = []
    base = Path(cfg.source).parent if cfg.source else Path.cwd()
    for spec in cfg.data.train_files:
        in_store = _is_uri(spec)
        if spec.startswith(RUN_REF):
            if run is None:
                raise TrainerError(f"{cfg.source}: data.train_files: {spec!r} needs a run prefix")
            spec = run.resolve(spec)
            if not open_store(spec).list():
                raise TrainerError(f"{cfg.source}: data.train_files: nothing under {spec}")
            in_store = True
        if in_store:
            store = open_store(spec)
            objects = [o for o in store.list() if not o.key.endswith("/")]
            if objects:  # a prefix: every object under it, in key order
                targets = [(store, o.key) for o in sorted(objects, key=lambda o: o.key)]
            else:  # a single object
                parent, _, name = spec.rstrip("/").rpartition("/")
                targets = [(open_store(parent), name)]
            for i, (src, key) in enumerate(targets):
                dest = (
                    workdir
                    / "sources"
                    / hashlib.sha256(spec.encode()).hexdigest()[:12]
                    / f"{i:05d}-{Path(key).name}"
                )
                if not dest.exists():
                    src.download_file(key, dest)
                files.append(dest)
            continue
        matches = sorted(glob.glob(spec)) or sorted(glob.glob(str(base / spec)))
        if not matches:
            raise TrainerError(f"{cfg.source}: data.train_files: no file matches {spec!r}")
        for m in map(Path, matches):  # a folder stands for every file under it
            files.extend(sorted(f for f in m.rglob("*") if f.is_file()) if m.is_dir() else [m])
    if not files:
        raise TrainerError(f"{cfg.source}: data.train_files: no text files found")
    return files


def fingerprint(cfg: TrainerConfig, sources: list[Path]) -> str:
    """What the cache depends on: data settings and each source's name and size."""
    data = asdict(cfg.data)
    payload = {
        "version": FORMAT_VERSION,
        "data": data,
        "sources": [[p.name, p.stat().st_size] for p in sources],
        "seed": cfg.run.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# -- building --------------------------------------------------------------------------------


def _paragraphs(sources: list[Path]) -> Iterator[str]:
    for path in sources:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    yield line


def train_tokenizer(sources: list[Path], vocab_size: int, out: Path) -> Any:
    """Train a byte-level BPE on the sources and save it as an HF fast tokenizer folder."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _paragraphs(sources), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tok.save_pretrained(out)
    return tok


def load_tokenizer(folder: str | Path) -> Any:
    """An HF tokenizer from a local folder (no hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TrainerError(f"cannot load tokenizer from {folder}: {err}") from None


def _local_folder(spec: str, workdir: Path, name: str) -> Path:
    """A local folder for ``spec``: itself, or a verified/plain download of a store URI."""
    if not _is_uri(spec):
        return Path(spec)
    from artifacts.manifest import MANIFEST_NAME
    from artifacts.store import open_store

    dest = workdir / name
    store = open_store(spec)
    if store.exists(MANIFEST_NAME):
        from artifacts.download import download_verified

        download_verified(spec, dest, force=True)
    else:
        for obj in store.list():
            store.download_file(obj.key, dest / obj.key)
    return dest


def build_cache(cfg: TrainerConfig, sources: list[Path], out: Path, fp: str) -> None:
    """Tokenize, pack into ``block_size`` blocks and split; writes into a fresh ``out``."""
    import numpy as np

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if cfg.data.tokenizer:
        tok = load_tokenizer(_local_folder(cfg.data.tokenizer, out.parent, "tokenizer-src"))
        tok.save_pretrained(out)
    else:
        tok = train_tokenizer(sources, cfg.data.vocab_size, out)
    eos = tok.eos_token_id
    if eos is None:
        raise TrainerError(f"tokenizer {cfg.data.tokenizer} has no eos token")
    dtype = np.uint16 if len(tok) <= 65535 else np.int32
    chunks: list[Any] = []
    batch: list[str] = []

    def flush() -> None:
        if batch:
            ids = tok(batch, add_special_tokens=False)["input_ids"]
            chunks.append(np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=dtype))
            batch.clear()

    for paragraph in _paragraphs(sources):
        batch.append(paragraph)
        if len(batch) >= 1000:
            flush()
    flush()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    block = cfg.data.block_size
    n_blocks = len(tokens) // block
    if n_blocks < 4:
        raise TrainerError(
            f"{cfg.source}: corpus has {len(tokens)} tokens, too few for blocks of {block} (need >= 4 blocks)"
        )
    blocks = tokens[: n_blocks * block].reshape(n_blocks, block)
    order = np.random.default_rng(cfg.run.seed).permutation(n_blocks)
    n_val = max(1, round(n_blocks * cfg.data.val_fraction))
    np.save(out / "val.npy", blocks[np.sort(order[:n_val])])
    np.save(out / "train.npy", blocks[np.sort(order[n_val:])])
    info = {
        "fingerprint": fp,
        "tokens": int(len(tokens)),
        "block_size": block,
        "train_blocks": int(n_blocks - n_val),
        "val_blocks": int(n_val),
        "vocab_size": len(tok),
        "sources": [p.name for p in sources],
    }
    (out / "data_info.json").write_text(json.dumps(info, indent=2))
    log.info(
        "data: %d tokens -> %d train / %d val blocks of %d (vocab %d)",
        len(tokens),
        n_blocks - n_val,
        n_val,
        block,
        len(tok),
    )


# -- cache in the store ----------------------------------------------------------------------


def _local_matches(local: Path, remote_manifest: bytes) -> bool:
    from artifacts.manifest import MANIFEST_NAME

    try:
        return (local / MANIFEST_NAME).read_bytes() == remote_manifest
    except OSError:
        return False


def ensure_cache(cfg: TrainerConfig, run: Run, workdir: Path) -> PreparedData:
    """Global rank 0: reuse ``<run>/cache/data`` when its fingerprint matches, else build and commit it."""
    from artifacts.download import download_verified
    from artifacts.errors import ArtifactError
    from artifacts.manifest import MANIFEST_NAME, Manifest
    from artifacts.publish import publish_dir
    from artifacts.store import open_store

    sources = resolve_sources(cfg, workdir, run)
    fp = fingerprint(cfg, sources)
    cache_uri = run.cache_data_uri
    store = open_store(cache_uri)
    local = workdir / "data"
    if store.exists(MANIFEST_NAME):
        remote = store.get_bytes(MANIFEST_NAME)
        try:
            meta = Manifest.from_json(remote).metadata
        except ArtifactError:
            meta = {}
        if meta.get("fingerprint") == fp:
            if not _local_matches(local, remote):
                download_verified(cache_uri, local, force=True)
            log.info("data: reusing cache %s", cache_uri)
            return PreparedData(local, fp)
        log.info("data: cache %s is for other data settings; rebuilding", cache_uri)
    build = workdir / "data-build"
    build_cache(cfg, sources, build, fp)
    store.delete_prefix("")
    publish_dir(build, cache_uri, metadata={"fingerprint": fp})
    if local.exists():
        shutil.rmtree(local)
    build.rename(local)
    # The local copy now equals the committed one; record its manifest for the next comparison.
    (local / MANIFEST_NAME).write_bytes(store.get_bytes(MANIFEST_NAME))
    return PreparedData(local, fp)


def fetch_cache(run: Run, workdir: Path) -> PreparedData:
    """Another node's local rank 0: make the node-local copy equal the committed cache."""
    from artifacts.download import download_verified
    from artifacts.manifest import MANIFEST_NAME, Manifest
    from artifacts.store import open_store

    cache_uri = run.cache_data_uri
    remote = open_store(cache_uri).get_bytes(MANIFEST_NAME)
    local = workdir / "data"
    if not _local_matches(local, remote):
        download_verified(cache_uri, local, force=True)
    return PreparedData(local, Manifest.from_json(remote).metadata.get("fingerprint", ""))


def prepare_data(
    cfg: TrainerConfig,
    run: Run,
    workdir: Path,
    *,
    rank: int,
    local_rank: int,
    all_ok: Callable[[bool], bool],
) -> PreparedData:
    """Every rank: rank 0 builds/reuses the cache, each node's local rank 0 fetches it, all load.

    ``all_ok(flag)`` is a collective (all-reduce MIN of a flag): it doubles as the barrier and
    lets a failure on one rank stop every rank with an error instead of a hang.
    """
    from artifacts.manifest import MANIFEST_NAME, Manifest

    failure: BaseException | None = None
    if rank == 0:
        try:
            ensure_cache(cfg, run, workdir)
        except BaseException as err:  # re-raised after the collective so peers stop too
            failure = err
    if not all_ok(failure is None):
        raise failure or TrainerError("data preparation failed on rank 0 (see its log)")
    if rank != 0 and local_rank == 0:
        try:
            fetch_cache(run, workdir)
        except BaseException as err:
            failure = err
    if not all_ok(failure is None):
        raise failure or TrainerError("data cache download failed on another node (see its log)")
    local = workdir / "data"
    meta = Manifest.from_json((local / MANIFEST_NAME).read_bytes()).metadata
    return PreparedData(local, str(meta.get("fingerprint", "")))


class BlockDataset:
    """A torch-style map dataset over a ``(n, block_size)`` token array: causal-LM examples."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.blocks = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        import numpy as np
        import torch

        ids = torch.from_numpy(np.asarray(self.blocks[i], dtype=np.int64))
        return {"input_ids": ids, "labels": ids.clone()}
