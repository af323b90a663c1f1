"""Pure manifest logic: format round trip, path safety, latest-committed selection, stale cleanup."""

from __future__ import annotations

import pytest

from artifacts.errors import ArtifactError
from artifacts.manifest import (
    FileEntry,
    Manifest,
    committed_folders,
    incomplete_folders,
    latest_committed,
)
from artifacts.store_api import ObjectInfo

SHA = "a" * 64


def obj(key: str, mtime: float = 0.0) -> ObjectInfo:
    return ObjectInfo(key, 1, mtime)


def test_manifest_round_trip_is_deterministic():
    m = Manifest(
        [FileEntry("b/x.bin", 3, SHA), FileEntry("a.json", 0, "b" * 64)],
        {"step": 7},
        "2026-01-01T00:00:00Z",
    )
    data = m.to_json()
    again = Manifest.from_json(data)
    assert again.to_json() == data
    assert again.by_path()["b/x.bin"].size == 3 and again.metadata == {"step": 7}


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a/../../b", "a//b", "", "a\\b", "./a"])
def test_manifest_rejects_paths_that_escape(path):
    doc = Manifest([FileEntry(path, 1, SHA)]).to_json()
    with pytest.raises(ArtifactError, match="unsafe file path"):
        Manifest.from_json(doc)


def test_manifest_rejects_bad_hash_and_duplicates():
    with pytest.raises(ArtifactError, match="bad size or sha256"):
        Manifest.from_json(Manifest([FileEntry("a", 1, "zz")]).to_json())
    with pytest.raises(ArtifactError, match="listed twice"):
        Manifest.from_json(Manifest([FileEntry("a", 1, SHA), FileEntry("a", 1, SHA)]).to_json())
    with pytest.raises(ArtifactError, match="not a twostage manifest"):
        Manifest.from_json(b'{"files": []}')


def test_latest_committed_ignores_incomplete_and_orders_naturally():
    listing = [
        obj("ck/step-9/MANIFEST.json"),
        obj("ck/step-9/w.bin"),
        obj("ck/step-10/w.bin"),
        obj("ck/step-10/MANIFEST.json"),
        obj("ck/step-11/w.bin"),  # upload in flight: no manifest
        obj("ck/step-2/MANIFEST.json"),
        obj("ck/step-12/deep/MANIFEST.json"),  # a manifest deeper down does not commit step-12
        obj("other/step-99/MANIFEST.json"),
        obj("ck/MANIFEST.json"),
    ]
    assert committed_folders(listing, "ck") == ["ck/step-2", "ck/step-9", "ck/step-10"]
    assert latest_committed(listing, "ck/") == "ck/step-10"
    assert latest_committed([obj("ck/step-1/a")], "ck") is None
    assert latest_committed(listing, "") == "ck"  # "other" holds a manifest only deeper down


def test_incomplete_folders_respect_grace_period():
    listing = [
        obj("ck/step-1/MANIFEST.json", 0),
        obj("ck/step-2/a", 10),
        obj("ck/step-2/b", 500),  # newest object decides
        obj("ck/step-3/a", 10),
    ]
    assert incomplete_folders(listing, "ck", grace_seconds=100, now=1000) == [
        "ck/step-2",
        "ck/step-3",
    ]
    assert incomplete_folders(listing, "ck", grace_seconds=600, now=1000) == ["ck/step-3"]
