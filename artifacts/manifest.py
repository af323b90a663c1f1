"""The manifest: the commit marker of every artifact, and pure functions over store listings.

A folder is *committed* when ``MANIFEST.json`` sits directly in it. The manifest is written last,
after every file it lists, so its presence proves the upload finished. It lists each file's size
and SHA-256 (a streaming hash: verifying a 50 GB file needs 1 MiB of memory) and carries free-form
metadata (step, val loss, config) for whoever resumes or downloads.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from artifacts.errors import ArtifactError, VerificationError

MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.json.sig"
#: Reserved folder inside an artifact for per-node upload records (multi-node commit).
PARTS_DIR = "_parts"
FORMAT = "twostage-manifest/1"
#: Names that live beside the files but are not listed in the manifest.
RESERVED = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: a relative POSIX path, its size and its SHA-256 (hex)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


class ListedObject(Protocol):
    """What the pure listing functions need from a store listing entry."""

    key: str
    mtime: float


def check_relpath(path: str) -> str:
    """Reject paths that could escape the artifact folder when joined on download."""
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ArtifactError(
            f"unsafe file path {path!r} in manifest: paths must be relative and stay inside the artifact"
        )
    return path


@dataclass
class Manifest:
    """Files + metadata of one committed artifact."""

    files: list[FileEntry]
    metadata: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_json(self) -> bytes:
        """Deterministic bytes: the signature covers exactly these."""
        doc = {
            "format": FORMAT,
            "created": self.created,
            "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)],
            "metadata": self.metadata,
        }
        return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str = MANIFEST_NAME) -> Manifest:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{source}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not a twostage manifest (expected format {FORMAT!r})")
        files: list[FileEntry] = []
        seen: set[str] = set()
        for raw in doc.get("files", []):
            try:
                entry = FileEntry(str(raw["path"]), int(raw["size"]), str(raw["sha256"]))
            except (KeyError, TypeError, ValueError):
                raise ArtifactError(f"{source}: malformed file entry {raw!r}") from None
            check_relpath(entry.path)
            if entry.size < 0 or not _SHA256.match(entry.sha256):
                raise ArtifactError(f"{source}: bad size or sha256 for {entry.path!r}")
            if entry.path in seen:
                raise ArtifactError(f"{source}: {entry.path!r} listed twice")
            seen.add(entry.path)
            files.append(entry)
        metadata = doc.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ArtifactError(f"{source}: metadata must be an object")
        return cls(files=files, metadata=metadata, created=str(doc.get("created", "")))

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_listing(manifest: Manifest, stored: dict[str, int], where: str) -> None:
    """Raise :class:`VerificationError` unless ``stored`` ({key: size}) is exactly the listing.

    The cheap check before any byte moves (download) or before a manifest is signed: no
    unlisted file, none missing, every size as listed.
    """
    listed = manifest.by_path()
    for key in sorted(stored):
        if key not in listed:
            raise VerificationError(f"{key}: unexpected file not listed in the manifest")
    for entry in manifest.files:
        if entry.path not in stored:
            raise VerificationError(f"{entry.path}: missing from {where} (listed in the manifest)")
        if stored[entry.path] != entry.size:
            raise VerificationError(
                f"{entry.path}: size mismatch (manifest {entry.size} bytes, stored {stored[entry.path]})"
            )


def is_listed_name(relpath: str) -> bool:
    """True for files that belong in the manifest (not the manifest, signature or parts)."""
    return relpath not in RESERVED and not relpath.startswith(PARTS_DIR + "/")


def _natural_key(name: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _children(listing: Iterable[ListedObject], prefix: str) -> dict[str, list[ListedObject]]:
    """Group a recursive listing by the immediate child folder of ``prefix``."""
    base = prefix.strip("/")
    base = base + "/" if base else ""
    groups: dict[str, list[ListedObject]] = {}
    for obj in listing:
        if not obj.key.startswith(base):
            continue
        rest = obj.key[len(base) :]
        if "/" not in rest:
            continue  # a file directly under prefix is not a folder
        groups.setdefault(base + rest.split("/", 1)[0], []).append(obj)
    return groups


def committed_folders(listing: Iterable[ListedObject], prefix: str = "") -> list[str]:
    """Folders directly under ``prefix`` that hold a manifest, oldest → newest by natural name order.

    Natural order (``step-9`` < ``step-10``) because checkpoint names carry the global step; a
    folder without a manifest is an interrupted upload and is never returned.
    """
    groups = _children(listing, prefix)
    done = [
        folder
        for folder, objs in groups.items()
        if any(o.key == f"{folder}/{MANIFEST_NAME}" for o in objs)
    ]
    return sorted(done, key=lambda k: _natural_key(k.rsplit("/", 1)[-1]))


def latest_committed(listing: Iterable[ListedObject], prefix: str = "") -> str | None:
    """The newest committed folder under ``prefix``, or None."""
    done = committed_folders(listing, prefix)
    return done[-1] if done else None


def incomplete_folders(
    listing: Iterable[ListedObject], prefix: str, grace_seconds: float, now: float
) -> list[str]:
    """Folders under ``prefix`` with no manifest whose newest object is older than the grace period.

    The grace period protects uploads still in flight (possibly from another node).
    """
    stale = []
    for folder, objs in _children(listing, prefix).items():
        if any(o.key == f"{folder}/{MANIFEST_NAME}" for o in objs):
            continue
        if now - max(o.mtime for o in objs) > grace_seconds:
            stale.append(folder)
    return sorted(stale, key=lambda k: _natural_key(k.rsplit("/", 1)[-1]))
