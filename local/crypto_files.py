"""Whole encrypted files: written atomically, re-keyed without plaintext on disk, and checked
before a run starts (the stream format itself is :mod:`local.crypto`)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag

from local.crypto import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    Header,
    check_chunk_size,
    check_key,
    chunk_nonce,
    decrypt_stream,
    encrypt_stream,
    key_id,
    open_header,
    read_header,
)
from local.errors import DecryptionError, LocalError


def encrypt_file(
    src: Path | BinaryIO,
    dest: Path,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Encrypt ``src`` (a path, or a binary stream such as in-memory plaintext) into ``dest``.

    Written through a temporary sibling and an atomic rename: ``dest`` is either the complete
    ciphertext or untouched, and a failure part-way (disk full, Ctrl-C) leaves no half-written
    file behind. An existing ``dest`` is replaced; refusing to overwrite is the caller's policy
    (``invoke encrypt`` refuses without ``--force``). Returns the ciphertext size.
    """
    dest = Path(dest)
    check_key(key)
    check_chunk_size(chunk_size)
    if not hasattr(src, "read"):
        src = Path(src)
        if not src.is_file():
            raise LocalError(f"{src}: no such file to encrypt")
        if src.resolve() == dest.resolve():
            raise LocalError(f"{dest}: destination is the source file; choose another --dest")
    if not dest.parent.is_dir():
        raise LocalError(f"{dest.parent}: destination folder does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, contextlib.ExitStack() as stack:
            inp = src if hasattr(src, "read") else stack.enter_context(Path(src).open("rb"))
            written = encrypt_stream(inp, out, key, chunk_size=chunk_size, on_progress=on_progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def reencrypt_file(
    src: Path, dest: Path, old_key: bytes, new_key: bytes, *, chunk_size: int | None = None
) -> int:
    """Re-encrypt ``src`` under ``new_key`` (key rotation) without plaintext ever touching disk.

    Decryption streams straight into encryption, chunk by chunk, in constant memory. The source's
    chunk size is kept unless ``chunk_size`` says otherwise (a rotation must not silently change
    the memory a reader needs). ``dest`` is written through a temporary sibling and renamed only
    after the *whole* source authenticated: a tampered or truncated source leaves no ``dest``
    behind. Returns the ciphertext size.
    """
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        raise LocalError(f"{dest}: destination is the source file; choose another --dest")
    if chunk_size is None:
        chunk_size = file_header(src).chunk_size
    return encrypt_file(
        _ChunkReader(decrypt_stream(src, old_key)), dest, new_key, chunk_size=chunk_size
    )


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (plaintext stays in memory)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self._pending:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._pending = memoryview(nxt)
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def file_header(path: Path) -> Header:
    """The (not yet authenticated) header of an encrypted file: chunk size, key id."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return read_header(f, str(path))
    except FileNotFoundError:
        raise LocalError(f"{path}: no such encrypted file") from None


def check_framing(path: Path, key: bytes) -> None:
    """The checks that read no plaintext but the last chunk, done before anything else starts
    (``invoke finetune`` refuses in milliseconds): the header's key id and MAC against ``key``;
    whether the bytes after the header can be whole chunks and a final one; and whether the last
    chunk authenticates *as the final one* — a copy truncated anywhere, even at a chunk boundary,
    fails that. What it decrypts (at most one chunk) is dropped at once.
    """
    path = Path(path)
    try:
        f = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise LocalError(f"{path}: no such encrypted file") from None
    with f:
        header = read_header(f, str(path))
        if header.key_id != key_id(bytes(key)):
            raise DecryptionError(
                f"{path}: wrong key (file needs key id {header.key_id.hex()}, the key given has "
                f"id {key_id(bytes(key)).hex()}); pass the key file it was encrypted with"
            )
        f.seek(0)
        header, aead = open_header(f, bytes(key), str(path))
        enc_size = header.chunk_size + TAG_SIZE
        body = os.fstat(f.fileno()).st_size - HEADER_SIZE
        rest = body % enc_size
        if not (body == TAG_SIZE or (body > 0 and (rest == 0 or rest > TAG_SIZE))):
            raise DecryptionError(
                f"{path}: truncated or damaged ({body} bytes after the header are not whole "
                f"{header.chunk_size}-byte chunks and a final one); copy the file again"
            )
        last = (body - 1) // enc_size
        f.seek(HEADER_SIZE + last * enc_size)
        sealed = f.read(enc_size)
        try:
            aead.decrypt(chunk_nonce(last, True), sealed, None)
        except InvalidTag:
            raise DecryptionError(
                f"{path}: truncated or damaged (chunk {last} does not authenticate as the end of "
                "the stream); copy the file again"
            ) from None
