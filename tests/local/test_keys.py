"""Key files (mode 0600, no overwrite, clear refusals) and the KMS envelope (moto)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from local import airgap, keys
from local.crypto import decrypt_bytes, encrypt_bytes, key_id
from local.errors import LocalError


def test_generate_key_file_is_private_and_loadable(tmp_path: Path) -> None:
    path = keys.generate_key_file(tmp_path / "data.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    key = keys.load_key(path)
    assert len(key) == 32 and key.hex() == text.strip()
    assert keys.load_key(keys.generate_key_file(tmp_path / "other.key")) != key


def test_generate_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = keys.generate_key_file(tmp_path / "data.key")
    before = path.read_bytes()
    with pytest.raises(LocalError, match="refusing to overwrite"):
        keys.generate_key_file(path)
    assert path.read_bytes() == before


def test_load_key_refusals_say_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(LocalError, match=r"not found; create one with `invoke keygen --out"):
        keys.load_key(missing)
    path = keys.generate_key_file(tmp_path / "data.key")
    path.chmod(0o640)
    with pytest.raises(
        LocalError, match=r"readable by group or others \(mode 0640\); run `chmod 600"
    ):
        keys.load_key(path)
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    short.chmod(0o600)
    with pytest.raises(LocalError, match="not a 256-bit key file"):
        keys.load_key(short)


def test_raw_32_byte_key_file_is_accepted(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    raw.chmod(0o600)
    assert keys.load_key(raw) == bytes(range(32))


# --- KMS envelope -----------------------------------------------------------------------------


@pytest.fixture
def kms_key():
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        yield client, client.create_key(Description="twostage test")["KeyMetadata"]["Arn"]


def test_wrap_and_unwrap_an_existing_key(tmp_path: Path, kms_key) -> None:
    _, arn = kms_key
    key_path = keys.generate_key_file(tmp_path / "data.key")
    wrapped = keys.wrap_key_with_kms(key_path, arn, tmp_path / "data.key.kms.json")
    doc = json.loads(wrapped.read_text())
    key = keys.load_key(key_path)
    assert doc["format"] == keys.WRAPPED_FORMAT and doc["kms_key_id"] == arn
    assert key.hex() not in wrapped.read_text() and key not in base64.b64decode(
        doc["ciphertext_blob"]
    )
    assert keys.unwrap_kms_key(wrapped) == key
    assert keys.load_key(wrapped) == key  # --key-file accepts the wrapped file too
    # Re-wrapping under another KMS key keeps the same data key (no data re-encryption).
    client, _ = kms_key
    other_arn = client.create_key(Description="rotation target")["KeyMetadata"]["Arn"]
    rewrapped = keys.wrap_key_with_kms(wrapped, other_arn, tmp_path / "rewrapped.kms.json")
    assert json.loads(rewrapped.read_text())["kms_key_id"] == other_arn
    assert keys.load_key(rewrapped) == key


def test_generated_kms_data_key_decrypts_data(tmp_path: Path, kms_key) -> None:
    _, arn = kms_key
    wrapped = keys.generate_kms_data_key(arn, tmp_path / "data.kms.json")
    key = keys.load_key(wrapped)
    assert len(key) == 32
    assert json.loads(wrapped.read_text())["data_key_id"] == key_id(key).hex()
    blob = encrypt_bytes(b'{"text": "x"}\n', key)
    assert decrypt_bytes(blob, keys.load_key(wrapped)) == b'{"text": "x"}\n'


def test_unwrap_refusals(tmp_path: Path, kms_key) -> None:
    client, arn = kms_key
    wrapped = keys.generate_kms_data_key(arn, tmp_path / "data.kms.json")
    doc = json.loads(wrapped.read_text())
    # A blob bound to another purpose (encryption context) is refused by KMS.
    other = tmp_path / "other.kms.json"
    blob = client.encrypt(KeyId=arn, Plaintext=b"k" * 32)["CiphertextBlob"]
    other.write_text(json.dumps({**doc, "ciphertext_blob": base64.b64encode(blob).decode()}))
    with pytest.raises(LocalError, match="KMS refused to unwrap"):
        keys.unwrap_kms_key(other)
    # KMS needs the network: inside the air gap the key must already be loaded.
    with airgap.airgapped(), pytest.raises(LocalError, match="before entering airgapped"):
        keys.load_key(wrapped)
    # A corrupted blob is refused too.
    raw = bytearray(base64.b64decode(doc["ciphertext_blob"]))
    raw[-1] ^= 1
    other.write_text(json.dumps({**doc, "ciphertext_blob": base64.b64encode(raw).decode()}))
    with pytest.raises(LocalError, match="KMS refused to unwrap"):
        keys.unwrap_kms_key(other)
    junk = tmp_path / "junk.json"
    junk.write_text('{"format": "something-else"}')
    with pytest.raises(LocalError, match="not a twostage wrapped key file"):
        keys.load_key(junk)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"AB" * 32 + b"\n", "lowercase"),
        (b"ab" * 32 + b"\r\n", "lowercase"),
        (b" " + b"ab" * 32 + b"\n", "lowercase"),
        (b"ab" * 32, "lowercase"),
        (b"ab" * 32 + b"\n\n", "lowercase"),
        (b"zz" * 32 + b"\n", "65 bytes"),
    ],
)
def test_key_files_follow_the_spec_to_the_letter(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(LocalError, match=why):
        keys.load_key(path)


@pytest.mark.parametrize("mode", [0o400, 0o700, 0o200])
def test_only_mode_0600_is_accepted(tmp_path: Path, mode: int) -> None:
    path = keys.generate_key_file(tmp_path / "data.key")
    path.chmod(mode)
    with pytest.raises(LocalError, match=f"has mode {mode:04o}; key files must be mode 0600"):
        keys.load_key(path)
    path.chmod(0o600)
    assert len(keys.load_key(path)) == 32


def test_keygen_wraps_an_existing_key_file_with_kms(tmp_path: Path, kms_key) -> None:
    from invoke import Context

    from local.crypto_cli import keygen

    _client, arn = kms_key
    plain = keys.generate_key_file(tmp_path / "data.key")
    keygen(Context(), out=str(tmp_path / "data.kms.json"), kms_key_id=arn, wrap=str(plain))
    wrapped = tmp_path / "data.kms.json"
    assert b"ciphertext_blob" in wrapped.read_bytes()
    assert keys.load_key(wrapped) == keys.load_key(plain)


# --- issue 21: key files that could be swapped or redirected are refused ------------------------


def test_a_symlinked_key_file_is_refused_not_followed(tmp_path: Path) -> None:
    real = keys.generate_key_file(tmp_path / "data.key")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(LocalError, match=r"is a symlink; pass the key file itself"):
        keys.load_key(link)


def test_a_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    import os

    path = keys.generate_key_file(tmp_path / "data.key")
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away (CI runs as root)")
    os.chown(path, 4321, 4321)
    with pytest.raises(LocalError, match=r"owned by uid 4321, not by you"):
        keys.load_key(path)


def test_a_key_file_in_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = keys.generate_key_file(folder / "data.key")
    folder.chmod(0o777)
    with pytest.raises(LocalError, match=r"which others may write \(mode 0777\)"):
        keys.load_key(path)
    folder.chmod(0o700)
    assert len(keys.load_key(path)) == 32


def test_wrapped_keys_need_the_data_key_id_and_the_codes_own_context(tmp_path: Path, kms_key) -> None:
    _, arn = kms_key
    wrapped = keys.generate_kms_data_key(arn, tmp_path / "data.kms.json")
    doc = json.loads(wrapped.read_text())
    no_id = tmp_path / "no-id.kms.json"
    no_id.write_text(json.dumps({k: v for k, v in doc.items() if k != "data_key_id"}))
    with pytest.raises(LocalError, match="lacks 'data_key_id'"):
        keys.unwrap_kms_key(no_id)
    wrong_id = tmp_path / "wrong-id.kms.json"
    wrong_id.write_text(json.dumps({**doc, "data_key_id": "00" * 8}))
    with pytest.raises(LocalError, match="does not match its recorded key id"):
        keys.unwrap_kms_key(wrong_id)
    context = tmp_path / "context.kms.json"
    context.write_text(json.dumps({**doc, "encryption_context": {"twostage:purpose": "other"}}))
    with pytest.raises(LocalError, match="is not this project's"):
        keys.unwrap_kms_key(context)
