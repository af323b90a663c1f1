"""Data keys: local 256-bit key files, and optional AWS KMS envelope encryption.

A *key file* holds the 256-bit master key as exactly 64 lowercase hex digits and one newline
(``invoke keygen`` writes it, mode 0600); exactly 32 raw bytes are accepted too. Nothing else is
(no uppercase, CRLF or spaces): :func:`load_key` follows ``docs/encryption-format.md`` to the
letter and refuses any mode but 0600.

A *wrapped key file* (JSON, ``"format": "twostage-kms-wrapped-key/v1"``) holds the data key
encrypted by an AWS KMS key (envelope encryption): the file itself is not secret, and the
plaintext key only ever exists in memory after :func:`unwrap_kms_key` asked KMS for it. That
call needs the network, so it must happen before the air gap goes up; :func:`load_key` accepts
either kind of file, so ``--key-file`` works with both. See ``docs/encryption-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from local.errors import LocalError

KEY_SIZE = 32
WRAPPED_FORMAT = "twostage-kms-wrapped-key/v1"
# Bound into every KMS call: a blob wrapped for something else cannot be passed off as a data key.
ENCRYPTION_CONTEXT = {"twostage:purpose": "dataset-data-key"}


def _write_new(out: Path, data: bytes, mode: int) -> Path:
    """Create ``out`` with ``mode`` (never widened by the umask race) or refuse if it exists."""
    out = Path(out)
    if not out.parent.is_dir():
        raise LocalError(f"{out.parent}: folder does not exist; create it first")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise LocalError(
            f"{out} already exists; refusing to overwrite a key (delete it or choose another --out)"
        ) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def generate_key_file(out: Path) -> Path:
    """Write a fresh random 256-bit key to ``out`` (hex, mode 0600); refuses to overwrite."""
    return _write_new(Path(out), os.urandom(KEY_SIZE).hex().encode() + b"\n", 0o600)


_HEX_KEY = re.compile(rb"[0-9a-f]{64}\n")


def _parse_key(raw: bytes, path: Path) -> bytes:
    """Exactly the spec's two forms: 64 lowercase hex digits + one newline, or 32 raw bytes."""
    if len(raw) == KEY_SIZE:
        return raw
    if _HEX_KEY.fullmatch(raw):
        return binascii.unhexlify(raw[:-1])
    if re.fullmatch(rb"\s*[0-9A-Fa-f]{64}\s*", raw):
        why = "64 hex digits but not in the spec's form (lowercase, then exactly one \\n)"
    else:
        why = f"{len(raw)} bytes"
    raise LocalError(
        f"{path}: not a 256-bit key file (expected 64 lowercase hex digits and a newline, or "
        f"{KEY_SIZE} raw bytes; found {why}); create one with `invoke keygen --out {path}`"
    )


def load_key(path: Path) -> bytes:
    """Return the 32-byte master key from a key file or a KMS-wrapped key file.

    Raises :class:`LocalError` (one line, with the fix) when the file is missing, is a symlink
    (opened with ``O_NOFOLLOW``: a link planted in its place cannot redirect the read), is not
    owned by this user, sits in a folder others may write (they could swap it), has the wrong
    size, or is readable by group/others. A wrapped key file is unwrapped through KMS, which
    needs the network: call this before entering :func:`local.airgap.airgapped`.
    """
    path = Path(path)
    raw, st = _read_own_file(path)
    if raw.lstrip().startswith(b"{"):
        return unwrap_kms_key(path, raw)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise LocalError(
            f"key file {path} is readable by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )
    if mode != 0o600:
        raise LocalError(
            f"key file {path} has mode {mode:04o}; key files must be mode 0600 "
            f"(owner read/write only): run `chmod 600 {path}`"
        )
    return _parse_key(raw, path)


def _read_own_file(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path``, opened without following a symlink, after the owner and folder
    checks (done on the open file, so nothing can be swapped in between)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise LocalError(
            f"key file {path} not found; create one with `invoke keygen --out {path}`"
        ) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LocalError(
                f"key file {path} is a symlink; pass the key file itself (links are not followed)"
            ) from None
        raise LocalError(f"key file {path}: cannot open ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise LocalError(f"key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise LocalError(
                f"key file {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
                f"copy it to a file you own (`install -m 600 {path} NEW`)"
            )
        folder = path.absolute().parent
        fmode = stat.S_IMODE(folder.stat().st_mode)
        if fmode & 0o002:
            raise LocalError(
                f"key file {path} is in {folder}, which others may write (mode {fmode:04o}): they "
                "could replace the key; move it to a private folder"
            )
        if st.st_size > 64 * 1024:
            raise LocalError(f"{path}: not a key file ({st.st_size} bytes)")
        return f.read(), st


# ---------------------------------------------------------------------------------------------
# AWS KMS envelope encryption (boto3 imported lazily: `invoke --list` must stay instant).


def _region_of(kms_key_id: str) -> str | None:
    parts = kms_key_id.split(":")
    return parts[3] if kms_key_id.startswith("arn:") and len(parts) > 3 and parts[3] else None


def _kms_client(region: str | None) -> Any:
    import boto3

    return boto3.client("kms", region_name=region) if region else boto3.client("kms")


def _kms_error(action: str, err: Exception) -> LocalError:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        return LocalError(f"KMS refused to {action}: {e.get('Code', '?')}: {e.get('Message', '')}")
    return LocalError(f"cannot reach AWS KMS to {action}: {err}")


def _write_wrapped(out: Path, kms_key_id: str, region: str | None, blob: bytes, key: bytes) -> Path:
    from local.crypto import key_id

    doc = {
        "format": WRAPPED_FORMAT,
        "kms_key_id": kms_key_id,
        "region": region,
        "encryption_context": ENCRYPTION_CONTEXT,
        "ciphertext_blob": base64.b64encode(blob).decode("ascii"),
        "data_key_id": key_id(key).hex(),
    }
    return _write_new(Path(out), (json.dumps(doc, indent=2) + "\n").encode(), 0o600)


def wrap_key_with_kms(
    key_file: Path, kms_key_id: str, out: Path, *, region: str | None = None
) -> Path:
    """Encrypt the key in ``key_file`` with the KMS key ``kms_key_id``; write the wrapped file.

    The wrapped file can be stored next to the data; only principals allowed ``kms:Decrypt`` on
    that KMS key can turn it back into the data key. ``key_file`` may itself be a wrapped key
    file: that re-wraps the same data key under another KMS key (no data re-encryption).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    key = load_key(key_file)
    region = region or _region_of(kms_key_id)
    try:
        resp = _kms_client(region).encrypt(
            KeyId=kms_key_id, Plaintext=key, EncryptionContext=ENCRYPTION_CONTEXT
        )
    except (ClientError, BotoCoreError) as err:
        raise _kms_error(f"wrap the key with {kms_key_id}", err) from None
    return _write_wrapped(out, resp.get("KeyId", kms_key_id), region, resp["CiphertextBlob"], key)


def generate_kms_data_key(kms_key_id: str, out: Path, *, region: str | None = None) -> Path:
    """Ask KMS for a new 256-bit data key and write only its wrapped form to ``out``.

    The plaintext key never touches disk on this machine.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    region = region or _region_of(kms_key_id)
    try:
        resp = _kms_client(region).generate_data_key(
            KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=ENCRYPTION_CONTEXT
        )
    except (ClientError, BotoCoreError) as err:
        raise _kms_error(f"generate a data key with {kms_key_id}", err) from None
    return _write_wrapped(
        out, resp.get("KeyId", kms_key_id), region, resp["CiphertextBlob"], resp["Plaintext"]
    )


def read_wrapped(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Parse and check a wrapped key file (no network); ``raw``: its bytes, already read."""
    path = Path(path)
    try:
        doc = json.loads(raw.decode() if raw is not None else path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LocalError(
            f"{path}: not a readable wrapped key file ({type(err).__name__})"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != WRAPPED_FORMAT:
        raise LocalError(f"{path}: not a twostage wrapped key file (format != {WRAPPED_FORMAT})")
    for field in ("kms_key_id", "ciphertext_blob", "data_key_id"):
        if not isinstance(doc.get(field), str):
            raise LocalError(f"{path}: wrapped key file lacks '{field}'")
    context = doc.get("encryption_context", ENCRYPTION_CONTEXT)
    if context != ENCRYPTION_CONTEXT:
        raise LocalError(
            f"{path}: encryption_context {context!r} is not this project's {ENCRYPTION_CONTEXT!r} "
            "(the context is fixed by the code, never taken from the file)"
        )
    return doc


def unwrap_kms_key(wrapped_path: Path, raw: bytes | None = None) -> bytes:
    """Return the 32-byte data key held in a wrapped key file, asking KMS to decrypt it.

    Needs the network (and ``kms:Decrypt`` on the KMS key): do it before going offline. The key
    stays in memory only.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from local import airgap

    wrapped_path = Path(wrapped_path)
    doc = read_wrapped(wrapped_path, raw)
    if airgap.active():
        raise LocalError(
            f"{wrapped_path} is KMS-wrapped and the air gap is already up; load the key "
            "(which asks KMS) before entering airgapped()"
        )
    try:
        blob = base64.b64decode(doc["ciphertext_blob"], validate=True)
    except binascii.Error:
        raise LocalError(f"{wrapped_path}: ciphertext_blob is not valid base64") from None
    try:
        resp = _kms_client(doc.get("region")).decrypt(
            CiphertextBlob=blob,
            KeyId=doc["kms_key_id"],
            EncryptionContext=ENCRYPTION_CONTEXT,  # fixed here, never read from the file
        )
    except (ClientError, BotoCoreError) as err:
        raise _kms_error(f"unwrap {wrapped_path}", err) from None
    key = resp["Plaintext"]
    if len(key) != KEY_SIZE:
        raise LocalError(f"{wrapped_path}: KMS returned a {len(key) * 8}-bit key, expected 256")
    from local.crypto import key_id

    if key_id(key).hex() != doc["data_key_id"]:
        raise LocalError(f"{wrapped_path}: unwrapped key does not match its recorded key id")
    return key
