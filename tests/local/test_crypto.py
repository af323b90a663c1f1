"""The encrypted stream format: round trips, every tampering class, constant memory, atomic writes."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from local import crypto, crypto_files
from local.crypto import HEADER_SIZE, TAG_SIZE, decrypt_bytes, encrypt_bytes
from local.errors import DecryptionError, LocalError

CS = 16  # a tiny chunk size keeps the exhaustive tamper tests fast
KEY = bytes(range(32))


def _chunk_spans(blob: bytes, chunk_size: int = CS) -> list[tuple[int, int]]:
    """(start, end) of each sealed chunk in ``blob``."""
    spans, pos = [], HEADER_SIZE
    while pos < len(blob):
        end = min(pos + chunk_size + TAG_SIZE, len(blob))
        spans.append((pos, end))
        pos = end
    return spans


def _rejected(blob: bytes, key: bytes = KEY) -> str:
    with pytest.raises(DecryptionError) as info:
        decrypt_bytes(blob, key)
    return str(info.value)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 5])
def test_round_trip_and_layout(size: int) -> None:
    data = os.urandom(size)
    blob = encrypt_bytes(data, KEY, chunk_size=CS)
    assert decrypt_bytes(blob, KEY) == data
    chunks = max(1, -(-size // CS))
    # header + one tag per chunk + the plaintext: the layout documented in docs/encryption-format.md
    assert len(blob) == HEADER_SIZE + chunks * TAG_SIZE + size
    assert blob[:8] == b"TWOSTAGE" and blob[8] == 1
    assert int.from_bytes(blob[9:13], "big") == CS


def test_round_trip_file_with_default_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * crypto.DEFAULT_CHUNK_SIZE + 123)
    src, dest = tmp_path / "plain.bin", tmp_path / "data.enc"
    src.write_bytes(data)
    crypto_files.encrypt_file(src, dest, KEY)
    pieces = list(crypto.decrypt_stream(dest, KEY))
    assert b"".join(pieces) == data
    assert [len(p) for p in pieces] == [crypto.DEFAULT_CHUNK_SIZE] * 3 + [123]


def test_encrypt_file_from_memory(tmp_path: Path) -> None:
    """In-memory plaintext goes straight to an encrypted file: no plaintext file ever exists."""
    dest = tmp_path / "data.enc"
    written = crypto_files.encrypt_file(io.BytesIO(b'{"text": "x"}\n' * 100), dest, KEY, chunk_size=CS)
    assert written == dest.stat().st_size
    assert decrypt_bytes(dest.read_bytes(), KEY) == b'{"text": "x"}\n' * 100
    assert [p.name for p in tmp_path.iterdir()] == ["data.enc"]


def test_same_plaintext_encrypts_differently() -> None:
    # A fresh random salt per file: equal files do not give equal ciphertexts.
    assert encrypt_bytes(b"same", KEY) != encrypt_bytes(b"same", KEY)


def test_chunk_nonces_follow_the_spec() -> None:
    """Decrypt chunk by chunk with only the spec's recipe, independently of the reader."""
    data = os.urandom(2 * CS + 3)
    blob = encrypt_bytes(data, KEY, chunk_size=CS)
    salt = blob[21:53]
    payload_key, _ = crypto._derive(KEY, salt)
    aead = AESGCM(payload_key)
    spans = _chunk_spans(blob)
    out = b""
    for i, (start, end) in enumerate(spans):
        flag = b"\x01" if i == len(spans) - 1 else b"\x00"
        out += aead.decrypt(i.to_bytes(11, "big") + flag, blob[start:end], None)
    assert out == data


# --- tampering --------------------------------------------------------------------------------

THREE_CHUNKS = encrypt_bytes(os.urandom(2 * CS + 8), KEY, chunk_size=CS)


def test_every_single_byte_flip_is_rejected_and_located() -> None:
    blob = THREE_CHUNKS
    spans = _chunk_spans(blob)
    assert len(spans) == 3
    for pos in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= mask
            msg = _rejected(bytes(bad))
            if pos < 8:
                assert "not a twostage encrypted file" in msg
            elif pos == 8:
                assert "unsupported format version" in msg
            elif pos < 13:  # chunk size
                assert "header" in msg or "wrong key" in msg
            elif pos < 21:  # key id: a flip here reads as a different key
                assert "wrong key" in msg
            elif pos < HEADER_SIZE:  # salt, header MAC
                assert "header failed authentication" in msg, (pos, msg)
            else:
                index = next(i for i, (s, e) in enumerate(spans) if s <= pos < e)
                assert f"chunk {index}" in msg, (pos, msg)


def test_bad_chunk_plaintext_is_never_yielded() -> None:
    data = bytes(range(2 * CS + 8))
    blob = bytearray(encrypt_bytes(data, KEY, chunk_size=CS))
    blob[_chunk_spans(bytes(blob))[1][0]] ^= 1  # first byte of chunk 1
    got = []
    with pytest.raises(DecryptionError, match="chunk 1"):
        for piece in crypto.decrypt_fileobj(io.BytesIO(bytes(blob)), KEY):
            got.append(piece)
    assert got == [data[:CS]]


def test_truncation_at_every_length_is_rejected() -> None:
    blob = THREE_CHUNKS
    boundaries = {e for _, e in _chunk_spans(blob)[:-1]} | {HEADER_SIZE}
    for length in range(len(blob)):
        msg = _rejected(blob[:length])
        if length in boundaries:
            assert "truncated" in msg, (length, msg)
    # The message at a chunk boundary says exactly what happened.
    assert "truncated after chunk 1" in _rejected(blob[: _chunk_spans(blob)[1][1]])
    assert "no data after the header" in _rejected(blob[:HEADER_SIZE])
    assert "truncated header" in _rejected(blob[:5]) and "empty file" in _rejected(b"")


def test_chunk_swap_drop_and_duplicate_are_rejected() -> None:
    blob = THREE_CHUNKS
    (a0, a1), (b0, b1), (c0, c1) = _chunk_spans(blob)
    head, c_0, c_1, c_2 = blob[:HEADER_SIZE], blob[a0:a1], blob[b0:b1], blob[c0:c1]
    assert "chunk 0" in _rejected(head + c_1 + c_0 + c_2)  # swapped
    assert "chunk 1" in _rejected(head + c_0 + c_2)  # dropped
    assert "chunk 1" in _rejected(head + c_0 + c_0 + c_1 + c_2)  # duplicated


@pytest.mark.parametrize(
    "extra",
    [b"\x00", b"A" * (CS + TAG_SIZE), THREE_CHUNKS, THREE_CHUNKS[-TAG_SIZE:]],
    ids=["one-byte", "one-chunk", "whole-file", "a-tag"],
)
def test_appended_bytes_are_rejected(extra: bytes) -> None:
    assert "chunk" in _rejected(THREE_CHUNKS + extra)


def test_appended_bytes_after_a_full_final_chunk_are_named() -> None:
    blob = encrypt_bytes(os.urandom(2 * CS), KEY, chunk_size=CS)
    assert "after the final chunk 1" in _rejected(blob + b"x")


def test_wrong_key_is_named_at_once() -> None:
    msg = _rejected(THREE_CHUNKS, key=os.urandom(32))
    assert "wrong key" in msg and crypto.key_id(KEY).hex() in msg


def test_unknown_version_is_rejected() -> None:
    bad = bytearray(THREE_CHUNKS)
    bad[8] = 2
    assert "unsupported format version 2" in _rejected(bytes(bad))


def test_header_from_another_file_is_rejected() -> None:
    other = encrypt_bytes(os.urandom(2 * CS + 8), KEY, chunk_size=CS)
    assert "chunk 0" in _rejected(other[:HEADER_SIZE] + THREE_CHUNKS[HEADER_SIZE:])


def test_empty_final_chunk_after_data_is_rejected() -> None:
    """A key holder could append an empty last chunk; the reader still insists on one encoding."""
    blob = encrypt_bytes(os.urandom(CS), KEY, chunk_size=CS)
    payload_key, _ = crypto._derive(KEY, blob[21:53])
    aead = AESGCM(payload_key)
    first = aead.encrypt(crypto.chunk_nonce(0, False), os.urandom(CS), None)
    forged = blob[:HEADER_SIZE] + first + aead.encrypt(crypto.chunk_nonce(1, True), b"", None)
    assert "empty final chunk" in _rejected(forged)


def test_not_our_file_and_bad_keys() -> None:
    assert "not a twostage encrypted file" in _rejected(b'{"text": "hello"}\n')
    with pytest.raises(LocalError, match="32 bytes"):
        encrypt_bytes(b"x", b"short")
    with pytest.raises(LocalError, match="chunk size"):
        encrypt_bytes(b"x", KEY, chunk_size=8)


# --- memory and atomic writes -----------------------------------------------------------------


def test_decrypt_runs_in_constant_memory(tmp_path: Path) -> None:
    src, dest = tmp_path / "big.bin", tmp_path / "big.enc"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    crypto_files.encrypt_file(src, dest, KEY, chunk_size=64 * 1024)
    tracemalloc.start()
    try:
        total = 0
        for piece in crypto.decrypt_stream(dest, KEY):
            assert len(piece) <= 64 * 1024
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 8 * 1024 * 1024
    assert peak < 1024 * 1024, f"decrypting 8 MiB peaked at {peak} bytes"


def test_encrypt_file_never_leaves_a_half_written_dest(tmp_path: Path, monkeypatch) -> None:
    src, dest = tmp_path / "plain.jsonl", tmp_path / "data.enc"
    src.write_bytes(os.urandom(5 * CS))
    dest.write_bytes(b"previous ciphertext")

    def explode(n: int) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        crypto_files.encrypt_file(src, dest, KEY, chunk_size=CS, on_progress=explode)
    assert dest.read_bytes() == b"previous ciphertext"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.enc", "plain.jsonl"]


def test_rekey_keeps_the_chunk_size_unless_told(tmp_path: Path) -> None:
    from local.crypto_files import file_header, reencrypt_file

    old, new = os.urandom(32), os.urandom(32)
    src = tmp_path / "data.enc"
    src.write_bytes(encrypt_bytes(b"x" * 5000, old, chunk_size=1024))
    reencrypt_file(src, tmp_path / "same.enc", old, new)
    assert file_header(tmp_path / "same.enc").chunk_size == 1024
    reencrypt_file(src, tmp_path / "other.enc", old, new, chunk_size=256)
    assert file_header(tmp_path / "other.enc").chunk_size == 256
    assert decrypt_bytes((tmp_path / "other.enc").read_bytes(), new) == b"x" * 5000
