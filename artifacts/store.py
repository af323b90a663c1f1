"""The stores by URI: :class:`LocalStore` (folders) and :func:`open_store`, which picks it or
``artifacts.s3.S3Store``; the interface itself is :mod:`artifacts.store_api`.

Why one interface: checkpoints, datasets and published models move between a laptop, a local
disk and S3 (or any S3-compatible endpoint via ``AWS_ENDPOINT_URL``); the rest of the code must
not care which. boto3 lives in :mod:`artifacts.s3` and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from artifacts.errors import ArtifactError
from artifacts.hashing import copy_and_hash
from artifacts.manifest import FileEntry, check_relpath
from artifacts.store_api import ObjectInfo, Progress, Store, progress_callback


class LocalStore(Store):
    """A folder on a local (or mounted) filesystem. Writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        return self.root / check_relpath(key) if key else self.root

    def child(self, rel: str) -> LocalStore:
        return LocalStore(self._path(rel))

    def _atomic_write(self, dest: Path, fill: Callable[[object], None]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload_file(self, local_path: Path, key: str, *, progress: Progress = False) -> FileEntry:
        local_path = Path(local_path)
        result: list[tuple[int, str]] = []
        try:
            size = local_path.stat().st_size
            with (
                progress_callback(progress, size, f"upload {local_path.name}") as cb,
                open(local_path, "rb") as src,
            ):
                self._atomic_write(
                    self._path(key), lambda f: result.append(copy_and_hash(src, f, cb))
                )
        except FileNotFoundError as err:
            raise ArtifactError(f"{err.filename}: no such file") from None
        n, digest = result[0]
        return FileEntry(key, n, digest)

    def download_file(self, key: str, local_path: Path, *, progress: Progress = False) -> FileEntry:
        src_path = self._path(key)
        local_path = Path(local_path)
        try:
            size = src_path.stat().st_size
            local_path.parent.mkdir(parents=True, exist_ok=True)
            with (
                progress_callback(progress, size, f"download {src_path.name}") as cb,
                open(src_path, "rb") as src,
                open(local_path, "wb") as dst,
            ):
                n, digest = copy_and_hash(src, dst, cb)
        except FileNotFoundError:
            raise ArtifactError(f"{src_path}: no such file") from None
        return FileEntry(key, n, digest)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(self._path(key), lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactError(f"{self._path(key)}: not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            st = base.stat()
            return [ObjectInfo(prefix.strip("/"), st.st_size, st.st_mtime)]
        out: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an atomic write in flight
                p = Path(dirpath) / name
                st = p.stat()
                out.append(ObjectInfo(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        # Remove folders left empty so listings and `ls` stay clean.
        for key in sorted({str(Path(k).parent) for k in keys}, key=len, reverse=True):
            d = self._path(key) if key != "." else self.root
            while d != self.root and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
                d = d.parent

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir() and path != self.root:
            shutil.rmtree(path)
        else:
            super().delete_prefix(prefix)


def open_store(uri: str) -> Store:
    """The store for ``s3://bucket/prefix``, ``file:///abs/path`` or a local path."""
    if not uri or not isinstance(uri, str):
        raise ArtifactError("empty store URI: use s3://bucket/prefix, file:///path or a local path")
    if uri.startswith("s3://"):
        from artifacts.s3 import S3Store

        return S3Store.from_uri(uri)
    if uri.startswith("file://"):
        rest = uri[len("file://") :]
        if not rest.startswith("/"):
            raise ArtifactError(
                f"invalid file URI {uri!r}: use file:///absolute/path or a plain path"
            )
        return LocalStore(Path(rest))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ArtifactError(
            f"unsupported URI scheme {scheme!r} in {uri!r}: use s3://bucket/prefix, file:///path or a local path"
        )
    return LocalStore(Path(uri).expanduser().absolute())
