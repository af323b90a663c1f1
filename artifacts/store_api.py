"""The store interface: :class:`Store`, its listing entry :class:`ObjectInfo`, key joining and
the progress argument every transfer takes. Implementations: ``artifacts.store.LocalStore``
(folders) and ``artifacts.s3.S3Store``; :func:`artifacts.store.open_store` picks one by URI.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from artifacts.manifest import FileEntry
from artifacts.progress import byte_progress

Progress = bool | Callable[[int], None]


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a recursive listing; ``key`` is relative to the store's root."""

    key: str
    size: int
    mtime: float
    etag: str = ""
    """The store's entity tag (S3 ``ETag``; empty for local files): changes whenever the object is rewritten."""


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store(ABC):
    """A tree of bytes addressed by '/'-separated keys under a root URI."""

    uri: str

    @abstractmethod
    def child(self, rel: str) -> Store:
        """The store rooted at ``rel`` below this one."""

    @abstractmethod
    def upload_file(self, local_path: Path, key: str, *, progress: Progress = False) -> FileEntry:
        """Upload a local file, hashing it while it streams."""

    @abstractmethod
    def download_file(self, key: str, local_path: Path, *, progress: Progress = False) -> FileEntry:
        """Download to a local file, hashing while the bytes stream."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`ArtifactError` naming the key if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursive)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def delete_prefix(self, prefix: str) -> None:
        self.delete([o.key for o in self.list(prefix)])

    def child_uri(self, rel: str) -> str:
        return self.uri.rstrip("/") + "/" + rel.strip("/") if rel.strip("/") else self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def progress_callback(progress: Progress, size: int, desc: str):
    """Normalise ``progress`` (bool or callback) into a context manager yielding a callback."""
    if callable(progress):
        from contextlib import nullcontext

        return nullcontext(progress)
    return byte_progress(size, desc, enabled=bool(progress))
