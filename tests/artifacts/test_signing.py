"""Ed25519 keys: file modes, refusal to overwrite, tamper and wrong-key detection."""

from __future__ import annotations

import stat

import pytest

from artifacts.errors import ArtifactError, VerificationError
from artifacts.signing import generate_keypair, sign, verify_signature


def test_keygen_modes_and_no_overwrite(tmp_path):
    priv, pub = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.name == "k.pub" and b"PUBLIC KEY" in pub.read_bytes()
    before = priv.read_bytes()
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")
    assert priv.read_bytes() == before


def test_sign_verify_tamper_and_wrong_key(tmp_path):
    priv, pub = generate_keypair(tmp_path / "k")
    _, other = generate_keypair(tmp_path / "o")
    sig = sign(b"manifest", priv)
    verify_signature(b"manifest", sig, pub)
    with pytest.raises(VerificationError, match="bad signature"):
        verify_signature(b"manifesT", sig, pub)
    with pytest.raises(VerificationError, match="bad signature"):
        verify_signature(b"manifest", sig, other)
    with pytest.raises(VerificationError, match="signature"):
        verify_signature(b"manifest", b"not base64!!", pub)


def test_the_signature_file_names_its_key_type_and_older_files_still_verify(tmp_path):
    import base64

    priv, pub = generate_keypair(tmp_path / "k")
    sig = sign(b"manifest", priv)
    key_type, b64 = sig.decode().split()
    assert key_type == "ed25519" and sig.endswith(b"\n")
    verify_signature(b"manifest", b64.encode() + b"\n", pub)  # a bare base64 line (older files)
    with pytest.raises(
        VerificationError, match="key type 'ecdsa-p256'; this build verifies ed25519"
    ):
        verify_signature(b"manifest", b"ecdsa-p256 " + base64.b64encode(b"x" * 64), pub)


def test_unreadable_or_wrong_keys_are_user_errors(tmp_path):
    (tmp_path / "junk").write_text("nope")
    with pytest.raises(ArtifactError, match="not an unencrypted PEM private key"):
        sign(b"x", tmp_path / "junk")
    with pytest.raises(ArtifactError, match="cannot read signing key"):
        sign(b"x", tmp_path / "missing")
    priv, _ = generate_keypair(tmp_path / "k")
    with pytest.raises(ArtifactError, match="not a PEM public key"):
        verify_signature(b"x", b"", priv)
