"""Fine-tuning records from an encrypted JSON Lines file, decrypted in memory only.

Each non-blank line is a JSON object with a ``text`` string, ``prompt`` and ``response``
strings, or a ``messages`` list of ``{"role", "content"}`` turns; forms may be mixed in a file.
The first complete form (messages, prompt/response, text) is used; other fields are ignored. Validation errors name
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
CHAT = "chat"
MIXED = "mixed"
EMPTY = "empty"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``invoke inspect-data`` reports: counts and sizes, never contents."""

    records: int
    plaintext_bytes: int
    ciphertext_bytes: int
    kind: str  # "text", "prompt-response", "chat", "mixed" or "empty"
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


ROLES = ("system", "user", "assistant")


def _string(obj: dict, key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise LocalError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise LocalError(
            f"{where}: field '{key}' holds a lone surrogate (a \\u{ord(value[err.start]):04x} "
            "escape without its pair), which is not valid Unicode; fix or remove the record"
        ) from None
    return value


def _messages(obj: dict, where: str) -> list[dict[str, str]]:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise LocalError(f"{where}: field 'messages' must be a non-empty list of turns")
    out = []
    for i, m in enumerate(msgs):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LocalError(f"{at} must be an object with 'role' and 'content'")
        role = _string(m, "role", at)
        if role not in ROLES:
            raise LocalError(f"{at}: role must be one of {', '.join(ROLES)}")
        out.append({"role": role, "content": _string(m, "content", at)})
    if not any(m["role"] == "assistant" for m in out):
        raise LocalError(f"{where}: a 'messages' record needs at least one assistant turn")
    return out


def parse_record(obj: object, where: str) -> dict:
    """The record's training form; the first complete form wins, other fields are ignored.

    Order: ``messages``, then ``prompt`` + ``response``, then ``text`` (docs/encryption-format.md).
    """
    if not isinstance(obj, dict):
        raise LocalError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return {"messages": _messages(obj, where)}
    if "prompt" in obj and "response" in obj:
        return {
            "prompt": _string(obj, "prompt", where),
            "response": _string(obj, "response", where),
        }
    if "text" in obj:
        text = _string(obj, "text", where)
        if not text.strip():
            raise LocalError(f"{where}: field 'text' is empty")
        return {"text": text}
    if "prompt" in obj or "response" in obj:
        missing = "response" if "prompt" in obj else "prompt"
        raise LocalError(f"{where}: record has no '{missing}' field")
    raise LocalError(
        f"{where}: record needs a 'text' field, 'prompt' and 'response' fields, or 'messages'"
    )


def kind_of(record: dict) -> str:
    if "messages" in record:
        return CHAT
    return PROMPT_RESPONSE if "prompt" in record else TEXT


def _records(chunks: Iterator[bytes], name: str) -> Iterator[dict]:
    number = 0
    for lineno, raw in enumerate(iter_lines(chunks), start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark some editors write
        if not raw.strip():
            continue
        number += 1
        where = f"{name}: line {lineno} (record {number})"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LocalError(f"{where}: not valid UTF-8 (at byte offset {err.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            # err.msg is the parser's reason ("Expecting ',' delimiter"), never the text itself.
            raise LocalError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        yield parse_record(obj, where)


def iter_records(cipher_path: Path, key: bytes) -> Iterator[dict]:
    """Yield ``{"text"}``, ``{"prompt", "response"}`` or ``{"messages"}`` records, in memory.

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
    kinds: set[str] = set()
    for record in _records(counted(), str(cipher_path)):
        records += 1
        kinds.add(kind_of(record))
    kind = EMPTY if not kinds else kinds.pop() if len(kinds) == 1 else MIXED
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

