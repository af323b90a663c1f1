"""Ed25519 signatures of manifests: origin checks on an air-gapped box with only a public key.

The signature file (``MANIFEST.json.sig``) is one line: the key type, a space, the base64
signature (``ed25519 AAAA…``). A bare base64 line (older files) is read as Ed25519. The private
key never goes near a machine that runs training code: the owner signs a finished run on their
own machine with ``invoke sign --run URI --signing-key K`` (see :mod:`artifacts.attest`).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from artifacts.errors import ArtifactError, VerificationError


def generate_keypair(out: Path) -> tuple[Path, Path]:
    """Write a private key at ``out`` (mode 0600) and its public key at ``out.pub``; never overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists():
            raise ArtifactError(
                f"{p} already exists: refusing to overwrite a key (choose another --out)"
            )
    if not out.parent.is_dir():
        raise ArtifactError(f"{out.parent}: no such directory for the key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL + 0600 at creation: the private key is never readable by others, not even briefly.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    try:
        fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(public_pem)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out, pub


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ArtifactError(f"cannot read {what} {path}: {err.strerror or err}") from None


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError) as err:
        raise ArtifactError(
            f"{path}: not an unencrypted PEM private key ({err}); create one with `invoke signing-keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{path}: not an Ed25519 key; create one with `invoke signing-keygen`")
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except (ValueError, TypeError) as err:
        raise ArtifactError(
            f"{path}: not a PEM public key ({err}); use the .pub file from `invoke signing-keygen`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"{path}: not an Ed25519 public key")
    return key


#: The key type written in the signature file; the only one this build signs and verifies.
KEY_TYPE = "ed25519"


def sign(data: bytes, private_key: Path) -> bytes:
    """Detached signature of ``data``: ``ed25519 <base64>`` (one line)."""
    raw = load_private_key(private_key).sign(data)
    return KEY_TYPE.encode() + b" " + base64.b64encode(raw) + b"\n"


def parse_signature(sig: bytes, *, what: str = "MANIFEST.json") -> bytes:
    """The raw signature bytes from a signature file; its key type must be one we verify."""
    parts = sig.strip().split()
    if len(parts) == 2:
        key_type, b64 = parts[0].decode("ascii", "replace"), parts[1]
        if key_type != KEY_TYPE:
            raise VerificationError(
                f"{what}: signature of key type {key_type!r}; this build verifies {KEY_TYPE} only"
            )
    elif len(parts) == 1:
        b64 = parts[0]  # an older file: bare base64 Ed25519
    else:
        raise VerificationError(f"{what}: malformed signature file")
    try:
        return base64.b64decode(b64, validate=True)
    except ValueError:
        raise VerificationError(f"{what}: malformed signature file (not base64)") from None


def verify_signature(
    data: bytes, sig: bytes, public_key: Path, *, what: str = "MANIFEST.json"
) -> None:
    """Raise :class:`VerificationError` unless ``sig`` is a valid signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    try:
        key.verify(parse_signature(sig, what=what), data)
    except InvalidSignature:
        raise VerificationError(
            f"{what}: bad signature (tampered manifest, or signed with another key)"
        ) from None
