"""The twostage encrypted-stream format: chunked AES-256-GCM (the STREAM construction).

Spec: ``docs/encryption-format.md``. In short::

    header (85 bytes) = magic "TWOSTAGE" | version 0x01 | chunk size (u32 BE) | key id (8)
                        | salt (32) | HMAC-SHA256(header key, the 53 bytes before it)
    chunk i           = AES-256-GCM(payload key, nonce = i as 11-byte BE | last flag, aad = "")
    payload key | header key = HKDF-SHA256(master key, salt, info="twostage-stream-v1", 64 bytes)

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last one holds 1 to
``chunk size`` bytes (0 only when the whole plaintext is empty) and is sealed with the last flag.
So a bit flip, a swapped or dropped chunk, a truncation at or inside a chunk boundary, appended
bytes and a wrong key all fail authentication, and the reader raises :class:`DecryptionError`
*before* handing out any plaintext of the bad chunk. Memory is constant in the chunk size.
"""

from __future__ import annotations

import hmac
import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from local.errors import DecryptionError, LocalError

MAGIC = b"TWOSTAGE"
VERSION = 1
KEY_SIZE = 32
SALT_SIZE = 32
KEY_ID_SIZE = 8
MAC_SIZE = 32
TAG_SIZE = 16
NONCE_COUNTER_SIZE = 11
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# magic, version, chunk size, key id, salt — then the MAC over exactly these bytes.
_HEADER_BODY = struct.Struct(f">{len(MAGIC)}sBI{KEY_ID_SIZE}s{SALT_SIZE}s")
HEADER_SIZE = _HEADER_BODY.size + MAC_SIZE  # 85
STREAM_INFO = b"twostage-stream-v1"
KEY_ID_INFO = b"twostage-key-id-v1"
_MAX_COUNTER = 2 ** (8 * NONCE_COUNTER_SIZE) - 1


@dataclass(frozen=True)
class Header:
    """The parsed, not yet authenticated, header of an encrypted file."""

    version: int
    chunk_size: int
    key_id: bytes
    salt: bytes
    mac: bytes
    body: bytes


def key_id(key: bytes) -> bytes:
    """Public 8-byte identifier of a master key (HKDF output; reveals nothing about the key).

    Why: lets the reader say "wrong key" at once instead of "chunk 0 failed", and lets a team
    tell which key a file needs during key rotation.
    """
    check_key(key)
    return HKDF(hashes.SHA256(), KEY_ID_SIZE, salt=None, info=KEY_ID_INFO).derive(key)


def _derive(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 2 * KEY_SIZE, salt=salt, info=STREAM_INFO).derive(key)
    return okm[:KEY_SIZE], okm[KEY_SIZE:]


def chunk_nonce(index: int, last: bool) -> bytes:
    if index > _MAX_COUNTER:
        raise DecryptionError("stream too long: chunk counter overflow")
    return index.to_bytes(NONCE_COUNTER_SIZE, "big") + (b"\x01" if last else b"\x00")


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise LocalError(f"a data key must be {KEY_SIZE} bytes (256 bits)")


def check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise LocalError(
            f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes, got {chunk_size}"
        )


def _read_full(f: BinaryIO, buf: bytearray | memoryview) -> int:
    """``readinto`` until ``buf`` is full or EOF; returns the byte count."""
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


# ---------------------------------------------------------------------------------------------
# Writing


def encrypt_stream(
    src: BinaryIO,
    dest: BinaryIO,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Encrypt everything readable from ``src`` into ``dest``; returns the ciphertext size.

    ``on_progress(n)`` is called with the plaintext byte count of each chunk (for a progress bar).
    """
    check_key(key)
    check_chunk_size(chunk_size)
    salt = os.urandom(SALT_SIZE)
    payload_key, header_key = _derive(key, salt)
    body = _HEADER_BODY.pack(MAGIC, VERSION, chunk_size, key_id(key), salt)
    dest.write(body + hmac.digest(header_key, body, "sha256"))
    written = HEADER_SIZE
    aead = AESGCM(payload_key)
    cur, nxt = bytearray(chunk_size), bytearray(chunk_size)
    cur_len = _read_full(src, cur)
    index = 0
    while True:
        # Look one chunk ahead: the current chunk is the last one exactly when nothing follows.
        nxt_len = _read_full(src, nxt) if cur_len == chunk_size else 0
        last = nxt_len == 0
        sealed = aead.encrypt(chunk_nonce(index, last), memoryview(cur)[:cur_len], None)
        dest.write(sealed)
        written += len(sealed)
        if on_progress is not None:
            on_progress(cur_len)
        if last:
            return written
        cur, nxt, cur_len = nxt, cur, nxt_len
        index += 1


def encrypt_bytes(data: bytes, key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Encrypt an in-memory buffer (tests, small blobs)."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk_size)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Reading


def read_header(f: BinaryIO, name: str = "input") -> Header:
    """Parse the header (magic, version, chunk size); authentication is :func:`open_header`'s job."""
    raw = f.read(HEADER_SIZE)
    if not raw:
        raise DecryptionError(f"{name}: empty file, not a twostage encrypted file")
    if len(raw) < len(MAGIC) and MAGIC.startswith(raw):
        raise DecryptionError(f"{name}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    if raw[: len(MAGIC)] != MAGIC:
        raise DecryptionError(f"{name}: not a twostage encrypted file (bad magic bytes)")
    if len(raw) < len(MAGIC) + 1:
        raise DecryptionError(f"{name}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    version = raw[len(MAGIC)]
    if version != VERSION:
        raise DecryptionError(
            f"{name}: unsupported format version {version} (this build reads version {VERSION})"
        )
    if len(raw) < HEADER_SIZE:
        raise DecryptionError(f"{name}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    body, mac = raw[: _HEADER_BODY.size], raw[_HEADER_BODY.size :]
    _, version, chunk_size, kid, salt = _HEADER_BODY.unpack(body)
    return Header(version, chunk_size, kid, salt, mac, body)


def open_header(f: BinaryIO, key: bytes, name: str) -> tuple[Header, AESGCM]:
    check_key(key)
    header = read_header(f, name)
    payload_key, header_key = _derive(key, header.salt)
    if not hmac.compare_digest(hmac.digest(header_key, header.body, "sha256"), header.mac):
        if not hmac.compare_digest(key_id(key), header.key_id):
            raise DecryptionError(
                f"{name}: wrong key (file needs key id {header.key_id.hex()}, "
                f"the key given has id {key_id(key).hex()})"
            )
        raise DecryptionError(f"{name}: header failed authentication (the header is corrupted)")
    if not MIN_CHUNK_SIZE <= header.chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError(f"{name}: header chunk size {header.chunk_size} out of range")
    return header, AESGCM(payload_key)


def _fail_chunk(aead: AESGCM, index: int, sealed: memoryview, last: bool, full: bool, name: str):
    """Work out *why* chunk ``index`` failed, for a message that says what happened."""
    try:
        aead.decrypt(chunk_nonce(index, not last), sealed, None)
        flipped_ok = True
    except InvalidTag:
        flipped_ok = False
    if flipped_ok and last:
        return DecryptionError(
            f"{name}: file truncated after chunk {index} (it is not the final chunk; "
            "the rest of the stream is missing)"
        )
    if flipped_ok:
        return DecryptionError(
            f"{name}: unexpected data after the final chunk {index} (appended or concatenated bytes)"
        )
    if last and not full:
        return DecryptionError(
            f"{name}: chunk {index} failed authentication (the file is truncated inside it, "
            "corrupted, or has bytes appended)"
        )
    return DecryptionError(
        f"{name}: chunk {index} failed authentication (corrupted, reordered, or followed by "
        "appended data)"
    )


def decrypt_fileobj(f: BinaryIO, key: bytes, name: str = "input") -> Iterator[bytes]:
    """Yield authenticated plaintext chunks from an open binary stream (see :func:`decrypt_stream`)."""
    header, aead = open_header(f, key, name)
    enc_size = header.chunk_size + TAG_SIZE
    cur, nxt = bytearray(enc_size), bytearray(enc_size)
    cur_len = _read_full(f, cur)
    if cur_len == 0:
        raise DecryptionError(f"{name}: file truncated: no data after the header")
    index = 0
    while True:
        nxt_len = _read_full(f, nxt) if cur_len == enc_size else 0
        last = nxt_len == 0
        sealed = memoryview(cur)[:cur_len]
        if cur_len < TAG_SIZE:
            raise DecryptionError(
                f"{name}: file truncated inside chunk {index} ({cur_len} bytes, "
                f"shorter than its {TAG_SIZE}-byte tag)"
            )
        try:
            plain = aead.decrypt(chunk_nonce(index, last), sealed, None)
        except InvalidTag:
            raise _fail_chunk(aead, index, sealed, last, cur_len == enc_size, name) from None
        if last and index > 0 and not plain:
            # A conforming writer never emits an empty final chunk after data; reject it so
            # every plaintext has exactly one encoding.
            raise DecryptionError(f"{name}: empty final chunk {index} (non-canonical stream)")
        yield plain
        if last:
            return
        cur, nxt, cur_len = nxt, cur, nxt_len
        index += 1


def decrypt_stream(path: Path, key: bytes) -> Iterator[bytes]:
    """Yield the authenticated plaintext of ``path`` chunk by chunk, in constant memory.

    Each yielded piece (at most the file's chunk size) has passed its GCM tag check; a bad chunk
    raises :class:`DecryptionError` before any of its bytes are yielded. Truncation is detected
    at the end, so act on the plaintext only after the iterator finished without an error.
    """
    path = Path(path)
    try:
        f = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise LocalError(f"{path}: no such encrypted file") from None
    except IsADirectoryError:
        raise LocalError(f"{path}: is a folder, expected an encrypted file") from None
    with f:
        yield from decrypt_fileobj(f, key, str(path))


def decrypt_bytes(blob: bytes, key: bytes) -> bytes:
    """Decrypt an in-memory ciphertext (tests, small blobs)."""
    return b"".join(decrypt_fileobj(io.BytesIO(blob), key))


