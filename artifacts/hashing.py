"""Hash-while-streaming file wrappers.

Why: a 50 GB checkpoint must be verified without a second read pass and without being held in
memory. Every byte that goes to or comes from a store passes through one of these objects exactly
once, in order, and leaves a SHA-256 behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Read size for local hashing and copying. Large enough that hashlib releases the GIL and the
#: syscall overhead vanishes; small enough to keep memory constant.
BUFFER_SIZE = 1024 * 1024


class HashingReader:
    """A read-only, *non-seekable* view of a file that hashes what is read.

    Non-seekable on purpose: boto3's transfer manager then reads the stream strictly in order
    (one part after another), so the running hash equals the file's SHA-256.
    """

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._progress = progress
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self.size += len(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingWriter:
    """A write-only, *non-seekable* sink that hashes what is written.

    boto3's transfer manager still fetches ranges concurrently but, seeing a non-seekable target,
    writes them in order — so the hash is computed while the download streams.
    """

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._progress = progress
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._raw.write(data)
        self.size += len(data)
        if self._progress is not None:
            self._progress(len(data))
        return len(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Return ``(size, sha256)`` of a local file in constant memory."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
            if progress is not None:
                progress(n)
    return size, h.hexdigest()


def copy_and_hash(
    src: BinaryIO, dest: BinaryIO, progress: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """Copy a stream to another while hashing it; one pass, constant memory."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    while n := src.readinto(buf):  # type: ignore[attr-defined]
        chunk = view[:n]
        h.update(chunk)
        dest.write(chunk)
        size += n
        if progress is not None:
            progress(n)
    return size, h.hexdigest()
