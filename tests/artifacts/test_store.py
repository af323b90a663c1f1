"""Store round trips on every backend, streamed hashes, multipart, URI errors."""

from __future__ import annotations

import hashlib
import os

import pytest

from artifacts.errors import ArtifactError
from artifacts.store import LocalStore, open_store


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_hashes_while_streaming(store_uri, sample_dir, tmp_path):
    store = open_store(store_uri)
    src = sample_dir / "sub" / "weights.bin"
    up = store.upload_file(src, "a/w.bin")
    assert (up.size, up.sha256) == (src.stat().st_size, sha(src))
    down = store.download_file("a/w.bin", tmp_path / "back.bin")
    assert (down.size, down.sha256) == (up.size, up.sha256)
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    store.put_bytes("a/b/meta.json", b"{}")
    assert store.get_bytes("a/b/meta.json") == b"{}"
    assert store.exists("a/b/meta.json") and not store.exists("a/nope")
    assert sorted(o.key for o in store.list("a")) == ["a/b/meta.json", "a/w.bin"]
    assert [o.key for o in store.child("a").list("b")] == ["b/meta.json"]
    store.delete_prefix("a/b")
    assert [o.key for o in store.list("a")] == ["a/w.bin"]


def test_missing_object_is_a_clear_error(store_uri):
    with pytest.raises(ArtifactError, match="not found"):
        open_store(store_uri).get_bytes("nope/MANIFEST.json")


def test_multipart_upload_is_used_for_large_files(monkeypatch, tmp_path):
    """A file above the part size goes up in parts (ETag '-N'), and the streamed hash is still whole-file."""
    import boto3
    from moto import mock_aws

    import artifacts.s3 as s3

    monkeypatch.setattr(s3, "PART_SIZE", 5 * 1024 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024 + 5))
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="mp-bucket")
        store = open_store("s3://mp-bucket/p")
        entry = store.upload_file(big, "big.bin")
        etag = boto3.client("s3").head_object(Bucket="mp-bucket", Key="p/big.bin")["ETag"]
        assert etag.strip('"').endswith("-3")
        assert entry.sha256 == sha(big)
        got = store.download_file("big.bin", tmp_path / "back.bin")
        assert got.sha256 == entry.sha256


@pytest.mark.parametrize(
    "uri,match",
    [
        ("gs://bucket/x", "unsupported URI scheme 'gs'"),
        ("s3://Bad_Bucket/x", "bucket name 'Bad_Bucket' is not valid"),
        ("file://relative/path", "use file:///absolute/path"),
        ("", "empty store URI"),
    ],
)
def test_bad_uris_name_the_problem(uri, match):
    with pytest.raises(ArtifactError, match=match):
        open_store(uri)


def test_missing_bucket_and_missing_credentials(monkeypatch, tmp_path):
    from moto import mock_aws

    f = tmp_path / "f"
    f.write_bytes(b"x")
    with mock_aws():
        with pytest.raises(ArtifactError, match="bucket does not exist"):
            open_store("s3://no-such-bucket/x").put_bytes("k", b"1")
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ArtifactError, match="AWS credentials not found"):
        open_store("s3://some-bucket/x").upload_file(f, "f")


def test_local_store_writes_atomically(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    assert [p.name for p in (tmp_path / "s" / "a").iterdir()] == ["b"]
    with pytest.raises(ArtifactError, match="unsafe file path"):
        store.put_bytes("../escape", b"1")
