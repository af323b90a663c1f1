"""Records from an encrypted JSON Lines file: both kinds, validation by line number, no content leaks."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import pytest

from local import dataset
from local.crypto_files import encrypt_file
from local.errors import DecryptionError, LocalError

KEY = os.urandom(32)
SECRET = "the launch code is 0000"


def _encrypt(tmp_path: Path, text: str | bytes, chunk_size: int = 64) -> Path:
    src, dest = tmp_path / "plain.jsonl", tmp_path / "data.enc"
    src.write_bytes(text.encode() if isinstance(text, str) else text)
    encrypt_file(src, dest, KEY, chunk_size=chunk_size)
    src.unlink()
    return dest


def test_text_records_across_chunk_boundaries(tmp_path: Path) -> None:
    texts = [f"{SECRET} #{i} " + "é" * i for i in range(50)]
    body = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts))
    cipher = _encrypt(tmp_path, "\ufeff" + body + "\n\n", chunk_size=16)
    assert list(dataset.iter_records(cipher, KEY)) == [{"text": t} for t in texts]


def test_prompt_response_records_with_crlf(tmp_path: Path) -> None:
    pairs = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)]
    cipher = _encrypt(tmp_path, "\r\n".join(json.dumps(p) for p in pairs))
    assert list(dataset.iter_records(cipher, KEY)) == pairs


def test_inspect_counts_and_authenticates(tmp_path: Path) -> None:
    body = "".join(json.dumps({"prompt": SECRET, "response": str(i)}) + "\n" for i in range(10))
    cipher = _encrypt(tmp_path, body, chunk_size=64)
    info = dataset.inspect(cipher, KEY)
    assert (info.records, info.kind) == (10, "prompt-response")
    assert info.plaintext_bytes == len(body.encode())
    assert info.ciphertext_bytes == cipher.stat().st_size
    assert info.chunks == -(-len(body.encode()) // 64) and info.chunk_size == 64
    assert SECRET not in repr(info)
    blob = bytearray(cipher.read_bytes())
    cipher.write_bytes(bytes(blob[:-20]))
    with pytest.raises(DecryptionError):
        dataset.inspect(cipher, KEY)


def test_empty_dataset(tmp_path: Path) -> None:
    info = dataset.inspect(_encrypt(tmp_path, ""), KEY)
    assert (info.records, info.kind, info.plaintext_bytes) == (0, "empty", 0)


def test_truncated_file_fails_after_yielding_authentic_records(tmp_path: Path) -> None:
    body = "".join(json.dumps({"text": f"r{i}"}) + "\n" for i in range(40))
    cipher = _encrypt(tmp_path, body, chunk_size=64)
    cipher.write_bytes(cipher.read_bytes()[: 85 + 2 * (64 + 16)])  # cut at a chunk boundary
    got = []
    with pytest.raises(DecryptionError, match="truncated after chunk 1"):
        for record in dataset.iter_records(cipher, KEY):
            got.append(record)
    assert got and all(r["text"].startswith("r") for r in got)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"text": SECRET}, "{not json " + SECRET], "line 2 (record 2): not valid JSON"),
        ([{"text": SECRET}, [SECRET]], "line 2 (record 2): expected a JSON object, got list"),
        ([{"text": SECRET}, {"body": SECRET}], "line 2 (record 2): record needs a 'text' field"),
        ([{"prompt": SECRET}], "line 1 (record 1): record has no 'response' field"),
        (
            [{"prompt": SECRET, "response": 7}],
            "line 1 (record 1): field 'response' must be a string, got int",
        ),
        ([{"text": "  "}], "line 1 (record 1): field 'text' is empty"),
        ([{"messages": []}], "field 'messages' must be a non-empty list"),
        ([{"messages": [{"role": "user", "content": SECRET}]}], "needs at least one assistant"),
        ([{"messages": [{"role": "bot", "content": SECRET}]}], "messages[0]: role must be one of"),
        (
            [{"text": "ok"}, {"text": "ok"}, {"text": SECRET + "\ud800"}],
            "line 3 (record 3): field 'text' holds a lone surrogate",
        ),
        (
            [{"messages": [{"role": "assistant", "content": "\udfff"}]}],
            "messages[0]: field 'content' holds a lone surrogate",
        ),
    ],
)
def test_bad_records_name_the_line_never_the_content(tmp_path: Path, lines, expected) -> None:
    body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    cipher = _encrypt(tmp_path, body)
    with pytest.raises(LocalError) as info:
        list(dataset.iter_records(cipher, KEY))
    assert expected in str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert SECRET not in shown and "launch code" not in shown


def test_the_first_complete_form_wins_and_other_fields_are_ignored(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    lines = [
        {"text": "t", "prompt": "p", "response": "r", "id": 3},
        {"text": "t", "prompt": "only a prompt"},
        {"messages": chat, "text": "t"},
    ]
    cipher = _encrypt(tmp_path, "".join(json.dumps(x) + "\n" for x in lines))
    assert list(dataset.iter_records(cipher, KEY)) == [
        {"prompt": "p", "response": "r"},
        {"text": "t"},
        {"messages": chat},
    ]
    assert dataset.inspect(cipher, KEY).kind == "mixed"


def test_a_lone_surrogate_fails_inspect_data_too(tmp_path: Path) -> None:
    cipher = _encrypt(tmp_path, '{"text": "ok"}\n{"text": "x\\ud800y"}\n')
    with pytest.raises(LocalError, match=r"line 2 \(record 2\).*lone surrogate"):
        dataset.inspect(cipher, KEY)


def test_invalid_utf8_is_reported_without_the_bytes(tmp_path: Path) -> None:
    cipher = _encrypt(tmp_path, b'{"text": "ok"}\n{"text": "\xff\xfe secret"}\n')
    with pytest.raises(
        LocalError, match=r"line 2 \(record 2\): not valid UTF-8 \(at byte offset 10\)"
    ) as info:
        list(dataset.iter_records(cipher, KEY))
    assert "secret" not in str(info.value) and "xff" not in str(info.value)


def test_a_line_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    from local.crypto import decrypt_stream
    from local.dataset import iter_lines

    cipher = _encrypt(tmp_path, "x" * 5000, chunk_size=64)
    with pytest.raises(LocalError, match="longer than 1000 bytes"):
        list(iter_lines(decrypt_stream(cipher, KEY), max_line_bytes=1000))


def test_open_decrypted_text_splits_lines_across_chunks(tmp_path: Path) -> None:
    lines = [f"line {i} " + "x" * i for i in range(40)]
    src, dest = tmp_path / "p.txt", tmp_path / "p.enc"
    src.write_text("\n".join(lines) + "\n")
    encrypt_file(src, dest, KEY, chunk_size=16)
    assert list(dataset.open_decrypted_text(dest, KEY)) == lines
