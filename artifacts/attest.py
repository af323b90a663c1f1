"""The owner signs a finished run on their own machine: ``invoke sign --run URI --signing-key K``.

Why here and not on the nodes: a node runs third-party code as root; a private key on it could
sign any model, for any run, for as long as the key lives. (A KMS asymmetric key that only the
controller may use would also keep the key off the nodes, but the controller runs the same
wheelhouse, and verifying it needs the KMS public key exported anyway; a key on the owner's
machine keeps the trust where the decision is made: a person who looked at the result.)

Before signing: the manifest must be a committed ``final/`` (``MANIFEST.json`` present and
valid), and the stored files must be exactly its listing with the listed sizes — the same cheap
checks ``invoke download`` runs before the first byte moves; the SHA-256 of every byte is what
the signature then vouches for, and ``invoke download --public-key`` checks those offline.
"""

from __future__ import annotations

from pathlib import Path

from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    check_listing,
    is_listed_name,
)
from artifacts.run import Run
from artifacts.signing import load_private_key, parse_signature, sign


def sign_run(run_uri: str, signing_key: Path, *, overwrite: bool = False) -> Manifest:
    """Check ``<run>/final/`` and write its ``MANIFEST.json.sig``; returns the signed manifest.

    A signature already there is kept unless ``overwrite`` (re-signing with the same Ed25519 key
    gives the same bytes, so that is a no-op either way).
    """
    key = load_private_key(Path(signing_key))  # a bad key fails before anything is read
    store = Run(run_uri).store.child(Run.FINAL)
    try:
        data = store.get_bytes(MANIFEST_NAME)
    except ArtifactError:
        raise ArtifactError(
            f"{store.uri}/{MANIFEST_NAME}: no published model; the run has not finished "
            "(see `invoke status`)"
        ) from None
    manifest = Manifest.from_json(data, source=f"{store.uri}/{MANIFEST_NAME}")
    stored = {o.key: o.size for o in store.list() if is_listed_name(o.key)}
    check_listing(manifest, stored, store.uri)
    signature = sign(data, Path(signing_key))
    if store.exists(SIGNATURE_NAME) and not overwrite:
        existing = store.get_bytes(SIGNATURE_NAME)
        from cryptography.exceptions import InvalidSignature

        try:
            key.public_key().verify(parse_signature(existing), data)
        except (InvalidSignature, VerificationError):
            raise VerificationError(
                f"{store.uri}/{SIGNATURE_NAME}: already signed, not by this key (or for another "
                "manifest); pass --overwrite to replace it"
            ) from None
        return manifest
    store.put_bytes(SIGNATURE_NAME, signature)
    return manifest
