"""Fine-tuning records from an encrypted JSON Lines file, decrypted in memory only.

Each non-blank line is a JSON object with either a ``text`` string, or ``prompt`` and
``response`` strings; one file holds one kind. Other fields are ignored. Validation errors name
the file and the line number and never quote the record: the data is private.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from local.crypto import decrypt_stream, read_header
from local.errors import LocalError

TEXT = "text"
PROMPT_RESPONSE = "prompt-response"
EMPTY = "empty"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``invoke inspect-data`` reports: counts and sizes, never contents."""

    records: int
    plaintext_bytes: int
    ciphertext_bytes: int
    kind: str  # "text", "prompt-response" or "empty"
    chunk_size: int = 0
    chunks: int = 0
    key_id: str = ""


def iter_lines(
    chunks: Iterator[bytes], *, max_line_bytes: int = 64 * 1024 * 1024
) -> Iterator[bytes]:
    """Split a chunk stream into lines (without the newline), holding at most one line in memory."""
    pending: list[bytes] = []
    pending_len = 0
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            if pending:
                pending.append(piece)
                piece = b"".join(pending)
                pending, pending_len = [], 0
            yield piece
            start = end + 1
        if start < len(chunk):
            tail = chunk[start:]
            pending.append(tail)
            pending_len += len(tail)
            if pending_len > max_line_bytes:
                raise LocalError(
                    f"a line is longer than {max_line_bytes} bytes; is this JSON Lines?"
                )
    if pending:
        yield b"".join(pending)


def open_decrypted_text(path: Path, key: bytes) -> Iterator[str]:
    """Yield the decrypted file's lines as ``str`` (UTF-8, newline stripped), never touching disk.

    Errors name the line number only, never the text.
    """
    for lineno, raw in enumerate(iter_lines(decrypt_stream(path, key)), start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LocalError(
                f"{path}: line {lineno}: not valid UTF-8 (at byte offset {err.start})"
            ) from None


def _kind_of(obj: object, where: str) -> str:
    if not isinstance(obj, dict):
        raise LocalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    has_text = "text" in obj
    has_pair = "prompt" in obj or "response" in obj
    if has_text and has_pair:
        raise LocalError(f"{where}: record has both 'text' and 'prompt'/'response'; use one form")
    if has_text:
        fields = ("text",)
    elif has_pair:
        fields = ("prompt", "response")
    else:
        raise LocalError(f"{where}: record needs a 'text' field or 'prompt' and 'response' fields")
    for field in fields:
        if field not in obj:
            raise LocalError(f"{where}: record has no '{field}' field")
        if not isinstance(obj[field], str):
            raise LocalError(
                f"{where}: field '{field}' must be a string, got {type(obj[field]).__name__}"
            )
    if has_text and not obj["text"].strip():
        raise LocalError(f"{where}: field 'text' is empty")
    return TEXT if has_text else PROMPT_RESPONSE


def _records(chunks: Iterator[bytes], name: str) -> Iterator[dict[str, str]]:
    kind = None
    for lineno, raw in enumerate(iter_lines(chunks), start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark some editors write
        if not raw.strip():
            continue
        where = f"{name}: line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LocalError(f"{where}: not valid UTF-8 (at byte offset {err.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            # err.msg is the parser's reason ("Expecting ',' delimiter"), never the text itself.
            raise LocalError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        this = _kind_of(obj, where)
        if kind is None:
            kind = this
        elif this != kind:
            raise LocalError(
                f"{where}: a '{this}' record in a '{kind}' file; one file holds one kind of record"
            )
        if this == TEXT:
            yield {"text": obj["text"]}
        else:
            yield {"prompt": obj["prompt"], "response": obj["response"]}


def iter_records(cipher_path: Path, key: bytes) -> Iterator[dict[str, str]]:
    """Yield ``{"text": ...}`` or ``{"prompt": ..., "response": ...}`` records, decrypting in memory.

    Each record comes from authenticated chunks, but truncation of the file is only known at the
    end: consume the iterator to the end (e.g. tokenize everything) before training on it.
    Raises :class:`local.errors.DecryptionError` on tampering or a wrong key, and
    :class:`local.errors.LocalError` naming the line on a bad record.
    """
    return _records(decrypt_stream(Path(cipher_path), key), str(cipher_path))


def inspect(cipher_path: Path, key: bytes) -> DatasetInfo:
    """Authenticate the whole file and count its records and bytes (contents are not kept)."""
    cipher_path = Path(cipher_path)
    plaintext = 0
    chunks = 0

    def counted() -> Iterator[bytes]:
        nonlocal plaintext, chunks
        for chunk in decrypt_stream(cipher_path, key):
            plaintext += len(chunk)
            chunks += 1
            yield chunk

    records = 0
    kind = EMPTY
    for record in _records(counted(), str(cipher_path)):
        records += 1
        kind = TEXT if "text" in record else PROMPT_RESPONSE
    with cipher_path.open("rb") as f:
        header = read_header(f, str(cipher_path))
    return DatasetInfo(
        records=records,
        plaintext_bytes=plaintext,
        ciphertext_bytes=cipher_path.stat().st_size,
        kind=kind,
        chunk_size=header.chunk_size,
        chunks=chunks,
        key_id=header.key_id.hex(),
    )
