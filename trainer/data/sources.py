"""Corpus sources for ``prepare-data``: what the recipe names, its content identity, its documents.

A source is one file: a local path (folders and globs expand to files) or one object under an
``s3://`` prefix (read through :mod:`artifacts.store`, never boto3). Formats by name: ``.jsonl``
(one JSON object per line with a ``text`` string), anything else plain UTF-8 text (one document
per non-empty line); either may end in ``.gz`` or ``.zst``.

Content identity (what the cache fingerprint is built from): a local file's SHA-256 (hashed in
threads; hashing runs at ~1 GB/s per core, about 0.2 % of tokenization time), an S3 object's
ETag plus size. S3 rewrites the ETag on every PUT, so a changed object of the same size rebuilds;
an identical re-upload may rebuild needlessly, never the other way round.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from artifacts.run import RUN_REF, Run
from trainer.errors import TrainerError

#: Decompressed bytes per block of a compressed source shared by lanes (see :func:`iter_docs`).
LANE_BLOCK = 1 << 20
#: Bytes read from the start of every local source to reject binary files before any work.
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Source:
    """One corpus file."""

    name: str
    """What messages call it: the local path or the object's URI."""
    uri: str
    """Local path, or ``s3://...`` URI of the object."""
    size: int
    """Bytes as stored (compressed size for ``.gz``/``.zst``)."""
    identity: str
    """``sha256:<hex>`` (local) or ``etag:<etag>:<size>`` (store): the fingerprint's input."""

    @property
    def local(self) -> bool:
        return "://" not in self.uri

    @property
    def compression(self) -> str:
        return "gz" if self.name.endswith(".gz") else "zst" if self.name.endswith(".zst") else ""

    @property
    def jsonl(self) -> bool:
        base = self.name.rsplit(".", 1)[0] if self.compression else self.name
        return base.endswith(".jsonl")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _sniff(path: Path, compression: str) -> None:
    """Reject a binary or non-UTF-8 file from its first bytes (cheap, before any tokenizing)."""
    try:
        with open_binary(path, compression) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, ValueError) as err:
        raise TrainerError(f"{path}: cannot read it ({err}); fix or remove the file") from None
    if b"\x00" in head:
        raise TrainerError(
            f"{path}: binary data (NUL byte), not text; remove it from data.train_files"
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the sniff boundary
            line = head[: err.start].count(b"\n") + 1
            raise TrainerError(
                f"{path}:{line}: not UTF-8 text (byte 0x{head[err.start]:02x}); convert it to UTF-8 or remove it"
            ) from None


def _stat_key(path: Path) -> str:
    st = path.stat()
    # ctime too: writing a file always moves it, and os.utime cannot set it back (git's rule).
    return f"{path.absolute()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def hash_files(paths: list[Path], cache: Path | None = None) -> list[str]:
    """SHA-256 of each file; a file whose stat (size, mtime, ctime, inode) is unchanged reuses its hash.

    Why the cache: a relaunch would otherwise re-read a local corpus in full before training.
    """
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    keys = [_stat_key(p) for p in paths]
    todo = [p for p, k in zip(paths, keys, strict=True) if k not in known]
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on big buffers
        fresh = dict(zip(todo, pool.map(_sha256_file, todo), strict=True))
    digests = [known.get(k) or fresh[p] for p, k in zip(paths, keys, strict=True)]
    if cache is not None and todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, **dict(zip(keys, digests, strict=True))}))
        tmp.replace(cache)
    return digests


def resolve_sources(
    train_files: tuple[str, ...],
    *,
    base: Path,
    run: Run | None,
    where: str,
    hash_cache: Path | None = None,
) -> list[Source]:
    """Every source file the recipe names, in a stable order (the order of ``train_files``, then by name).

    ``run:REL`` means ``REL`` under the run prefix. Raises :class:`TrainerError` naming the entry
    for a pattern with no match, an empty or unreadable prefix, or a binary local file.
    """
    from artifacts.store import open_store

    found: list[Source] = []
    local: list[Path] = []
    for spec in train_files:
        if spec.startswith(RUN_REF):
            if run is None:
                raise TrainerError(
                    f"{where}: data.train_files: {spec!r} needs a run prefix (--run)"
                )
            spec = run.resolve(spec)
            if "://" not in spec and not Path(spec).exists():
                raise TrainerError(f"{where}: data.train_files: nothing under {spec}")
        if "://" in spec:
            store = open_store(spec)
            objects = [o for o in store.list() if not o.key.endswith("/")]
            if not objects:
                parent, _, leaf = spec.rstrip("/").rpartition("/")
                objects = [o for o in open_store(parent).list(leaf) if o.key == leaf]
                if not objects:
                    raise TrainerError(f"{where}: data.train_files: nothing under {spec}")
                store = open_store(parent)
            for o in sorted(objects, key=lambda o: o.key):
                uri = store.child_uri(o.key)
                ident = f"etag:{o.etag}:{o.size}" if o.etag else ""
                found.append(Source(uri, uri, o.size, ident))
            continue
        matches = sorted(glob.glob(spec)) or sorted(glob.glob(str(base / spec)))
        if not matches:
            raise TrainerError(f"{where}: data.train_files: no file matches {spec!r}")
        for m in map(Path, matches):
            files = sorted(f for f in m.rglob("*") if f.is_file()) if m.is_dir() else [m]
            if m.is_dir() and not files:
                raise TrainerError(f"{where}: data.train_files: folder {m} holds no files")
            local += files
    for path in local:
        _sniff(path, Source(str(path), str(path), 0, "").compression)
    digests = hash_files(local, hash_cache)
    found += [
        Source(str(p), str(p.absolute()), p.stat().st_size, f"sha256:{d}")
        for p, d in zip(local, digests, strict=True)
    ]
    # Local stores (file:// prefixes, run:data/ on disk) have no ETag: hash them like files.
    found = [s if s.identity else _hash_store_object(s) for s in found]
    if not found:
        raise TrainerError(f"{where}: data.train_files: no text files found")
    if sum(s.size for s in found) == 0:
        raise TrainerError(f"{where}: data.train_files: every source is empty (no text)")
    return found


def _hash_store_object(src: Source) -> Source:
    from artifacts.store import LocalStore, open_store

    parent, _, leaf = src.uri.rpartition("/")
    store = open_store(parent)
    if isinstance(store, LocalStore):
        path = store.root / leaf
        return Source(src.name, str(path), src.size, f"sha256:{_sha256_file(path)}")
    return Source(
        src.name, src.uri, src.size, f"size:{src.size}"
    )  # pragma: no cover - S3 has ETags


def open_binary(path: Path, compression: str) -> BinaryIO:
    """The decompressed byte stream of a local file."""
    if compression == "gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "zst":
        import zstandard

        raw = path.open("rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))  # type: ignore[arg-type]
    return path.open("rb")
