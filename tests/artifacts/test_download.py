"""Publish → verified download, and every failure mode leaves DEST exactly as it was."""

from __future__ import annotations

import json
import os

import pytest

from artifacts.download import download_verified
from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from artifacts.publish import commit_parts, publish_dir, publish_part
from artifacts.signing import generate_keypair
from artifacts.store import open_store
from artifacts.verify import verify_dir


def snapshot(path):
    """Everything observable about a folder: names and bytes (None if it does not exist)."""
    if not path.exists():
        return None
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "sign.key")


def test_publish_then_download_round_trip(store_uri, sample_dir, tmp_path, keys):
    priv, pub = keys
    m = publish_dir(sample_dir, store_uri, metadata={"step": 3}, signing_key=priv)
    assert {f.path for f in m.files} == {
        "config.json",
        "empty.txt",
        "sub/weights.bin",
        "sub/deep/x.txt",
    }
    dest = tmp_path / "dl" / "model"
    got = download_verified(store_uri, dest, public_key=pub)
    assert got.metadata == {"step": 3}
    for f in m.files:
        assert (dest / f.path).read_bytes() == (sample_dir / f.path).read_bytes()
    assert (dest / MANIFEST_NAME).exists() and (dest / SIGNATURE_NAME).exists()
    assert verify_dir(dest, public_key=pub).metadata == {"step": 3}
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_manifest_is_written_last(tmp_path, sample_dir, monkeypatch):
    """If the upload dies before the end, no manifest exists: the folder is never used."""
    import artifacts.store as st

    calls = []
    real = st.LocalStore.upload_file

    def flaky(self, local, key, **kw):
        calls.append(key)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, local, key, **kw)

    monkeypatch.setattr(st.LocalStore, "upload_file", flaky)
    monkeypatch.setattr("artifacts.publish.FILE_CONCURRENCY", 1)
    with pytest.raises(OSError):
        publish_dir(sample_dir, str(tmp_path / "dst"))
    assert not (tmp_path / "dst" / MANIFEST_NAME).exists()


def _corrupt(store_uri, how):
    store = open_store(store_uri)
    if how == "flip":
        data = bytearray(store.get_bytes("sub/weights.bin"))
        data[len(data) // 2] ^= 1
        store.put_bytes("sub/weights.bin", bytes(data))
        return "sub/weights.bin: sha256 mismatch"
    if how == "truncate":
        store.put_bytes("config.json", b'{"a"')
        return "config.json: size mismatch"
    if how == "missing":
        store.delete(["sub/deep/x.txt"])
        return "sub/deep/x.txt: missing"
    if how == "extra":
        store.put_bytes("sub/evil.pkl", b"boom")
        return "sub/evil.pkl: unexpected file not listed"
    if how == "no_manifest":
        store.delete([MANIFEST_NAME])
        return "MANIFEST.json: missing"
    if how == "manifest_tampered":
        doc = json.loads(store.get_bytes(MANIFEST_NAME))
        doc["metadata"]["step"] = 999
        store.put_bytes(MANIFEST_NAME, json.dumps(doc).encode())
        return "bad signature"
    if how == "no_signature":
        store.delete([SIGNATURE_NAME])
        return "signature missing"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["flip", "truncate", "missing", "extra", "no_manifest", "manifest_tampered", "no_signature"],
)
@pytest.mark.parametrize("dest_state", ["absent", "existing"])
def test_every_failure_leaves_dest_untouched(
    store_uri, sample_dir, tmp_path, keys, how, dest_state
):
    priv, pub = keys
    publish_dir(sample_dir, store_uri, metadata={"step": 1}, signing_key=priv)
    expected = _corrupt(store_uri, how)
    dest = tmp_path / "parent" / "model"
    if dest_state == "existing":
        dest.mkdir(parents=True)
        (dest / "old.txt").write_text("keep me")
    before = snapshot(tmp_path / "parent")
    with pytest.raises(VerificationError, match=expected):
        download_verified(store_uri, dest, public_key=pub, force=True)
    assert snapshot(tmp_path / "parent") == before
    assert (tmp_path / "parent").exists() == (dest_state == "existing")


def test_wrong_public_key_is_rejected(tmp_path, sample_dir, keys):
    priv, _ = keys
    _, other_pub = generate_keypair(tmp_path / "other.key")
    publish_dir(sample_dir, str(tmp_path / "a"), signing_key=priv)
    with pytest.raises(VerificationError, match="bad signature"):
        download_verified(str(tmp_path / "a"), tmp_path / "d", public_key=other_pub)
    assert not (tmp_path / "d").exists()


def test_nonempty_dest_needs_force_and_is_replaced_only_after_verification(tmp_path, sample_dir):
    publish_dir(sample_dir, str(tmp_path / "a"))
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(ArtifactError, match="pass --force"):
        download_verified(str(tmp_path / "a"), dest)
    download_verified(str(tmp_path / "a"), dest, force=True)
    assert not (dest / "old.txt").exists() and (dest / "config.json").exists()


def test_verify_dir_detects_local_tampering(tmp_path, sample_dir):
    publish_dir(sample_dir, str(tmp_path / "a"))
    dest = tmp_path / "d"
    download_verified(str(tmp_path / "a"), dest)
    verify_dir(dest)
    with open(dest / "sub" / "weights.bin", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x80]))
    with pytest.raises(VerificationError, match="sub/weights.bin: sha256 mismatch"):
        verify_dir(dest)
    (dest / "sub" / "weights.bin").write_bytes(os.urandom(10))
    with pytest.raises(VerificationError, match="size mismatch"):
        verify_dir(dest)


def test_republish_requires_overwrite(tmp_path, sample_dir):
    publish_dir(sample_dir, str(tmp_path / "a"))
    with pytest.raises(ArtifactError, match="already holds a committed artifact"):
        publish_dir(sample_dir, str(tmp_path / "a"))
    publish_dir(sample_dir, str(tmp_path / "a"), overwrite=True, metadata={"v": 2})
    assert Manifest.from_json((tmp_path / "a" / MANIFEST_NAME).read_bytes()).metadata == {"v": 2}


def test_multi_node_commit_waits_for_every_part(store_uri, sample_dir, tmp_path):
    """Two nodes upload disjoint shards; the manifest appears only once both are done."""
    store = open_store(store_uri)
    publish_part(sample_dir, store_uri, "node-0", files=["config.json", "sub/weights.bin"])
    with pytest.raises(ArtifactError, match="waiting for parts node-1; not committed"):
        commit_parts(store_uri, ["node-0", "node-1"], timeout=0, poll=0.01)
    assert not store.exists(MANIFEST_NAME)
    publish_part(sample_dir, store_uri, "node-1", files=["empty.txt", "sub/deep/x.txt"])
    m = commit_parts(store_uri, ["node-0", "node-1"], metadata={"step": 5})
    assert len(m.files) == 4 and store.exists(MANIFEST_NAME)
    got = download_verified(store_uri, tmp_path / "d")
    assert got.metadata == {"step": 5}


def test_a_parent_made_by_another_process_meanwhile_is_used_and_not_removed(
    store_uri, sample_dir, tmp_path, monkeypatch
):
    """Two ranks of a node download into one scratch: both see ``scratch`` missing, one makes it
    first. The other must go on (it raised FileExistsError), and on failure it must leave the
    folder it did not make (the first rank may be writing there)."""
    from pathlib import Path

    publish_dir(sample_dir, store_uri)
    real = Path.mkdir
    shared = tmp_path / "scratch"

    def other_rank_first(self, *a, **kw):
        if self == shared and not shared.exists():
            real(shared)  # the other rank wins the race between exists() and mkdir()
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", other_rank_first)
    download_verified(store_uri, shared / "node0" / "model")
    assert snapshot(shared / "node0" / "model")["config.json"]

    import shutil

    import artifacts.download as download

    def bad_bytes(*a, **kw):
        raise VerificationError("sha256 mismatch (simulated)")

    shutil.rmtree(shared)
    monkeypatch.setattr(download, "check_file", bad_bytes)
    with pytest.raises(VerificationError):
        download_verified(store_uri, shared / "node1" / "model")
    assert shared.is_dir() and not any(shared.iterdir())  # its own parent node1 is gone
