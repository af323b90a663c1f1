"""Offline verification of a downloaded artifact folder (stage 2 calls this before loading a model)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from artifacts.errors import ArtifactError, VerificationError
from artifacts.hashing import hash_file
from artifacts.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, is_listed_name
from artifacts.signing import verify_signature

#: hashlib releases the GIL, so several files hash in parallel on several cores.
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))


def read_manifest(folder: Path, *, public_key: Path | None = None) -> tuple[Manifest, bytes]:
    """Parse ``folder/MANIFEST.json`` and check its signature when a public key is given."""
    folder = Path(folder)
    try:
        data = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise VerificationError(
            f"{folder}: {MANIFEST_NAME} missing — not a committed artifact (download it with `invoke download`)"
        ) from None
    if public_key is not None:
        try:
            sig = (folder / SIGNATURE_NAME).read_bytes()
        except FileNotFoundError:
            raise VerificationError(
                f"{folder / SIGNATURE_NAME}: signature missing but a public key was given"
            ) from None
        verify_signature(data, sig, public_key, what=str(folder / MANIFEST_NAME))
    try:
        manifest = Manifest.from_json(data, source=str(folder / MANIFEST_NAME))
    except VerificationError:
        raise
    except ArtifactError as err:
        # A malformed manifest is a verification failure; any other exception is a bug and
        # must surface as one (with its traceback), not as "verification failed".
        raise VerificationError(str(err)) from None
    return manifest, data


def check_file(
    path: Path, entry: FileEntry, *, size: int | None = None, sha256: str | None = None
) -> None:
    """Compare one file with its manifest entry; hashes it unless ``sha256`` is already known."""
    if sha256 is None:
        try:
            size, sha256 = hash_file(path)
        except FileNotFoundError:
            raise VerificationError(f"{entry.path}: missing (listed in the manifest)") from None
    if size != entry.size:
        raise VerificationError(
            f"{entry.path}: size mismatch (manifest {entry.size} bytes, got {size})"
        )
    if sha256 != entry.sha256:
        raise VerificationError(
            f"{entry.path}: sha256 mismatch (manifest {entry.sha256[:12]}…, got {sha256[:12]}…)"
        )


def unlisted_files(folder: Path, manifest: Manifest) -> list[str]:
    listed = manifest.by_path()
    extra = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if is_listed_name(rel) and rel not in listed:
                extra.append(rel)
    return sorted(extra)


def verify_dir(path: Path, *, public_key: Path | None = None) -> Manifest:
    """Re-hash every file of ``path`` against its manifest; raise naming the first bad file.

    Extra files fail too: a file slipped into a model folder (a pickle, say) would otherwise be
    loaded without ever having been published.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise VerificationError(f"{folder}: not a directory")
    manifest, _ = read_manifest(folder, public_key=public_key)
    extra = unlisted_files(folder, manifest)
    if extra:
        raise VerificationError(f"{extra[0]}: unexpected file not listed in the manifest")
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        list(pool.map(lambda e: check_file(folder / e.path, e), manifest.files))
    return manifest
