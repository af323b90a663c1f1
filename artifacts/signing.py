"""Ed25519 signatures of manifests: origin checks on an air-gapped box with only a public key."""

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


def sign(data: bytes, private_key: Path) -> bytes:
    """Detached signature of ``data`` as base64 text (one line)."""
    return base64.b64encode(load_private_key(private_key).sign(data)) + b"\n"


def verify_signature(
    data: bytes, sig: bytes, public_key: Path, *, what: str = "MANIFEST.json"
) -> None:
    """Raise :class:`VerificationError` unless ``sig`` is a valid signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    try:
        raw = base64.b64decode(sig.strip(), validate=True)
        key.verify(raw, data)
    except (InvalidSignature, ValueError):
        raise VerificationError(
            f"{what}: bad signature (tampered manifest, or signed with another key)"
        ) from None
