"""Stores for the artifact tests: a local folder, moto in-process, and moto's server on 127.0.0.1."""

from __future__ import annotations

import uuid

import pytest


def _make_bucket(name: str) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)


@pytest.fixture(params=["local", "moto", "moto_server"])
def store_uri(request, tmp_path, monkeypatch):
    """A fresh, empty artifact location on each backend."""
    if request.param == "local":
        yield (tmp_path / "bucket").as_uri()
        return
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "moto":
        from moto import mock_aws

        with mock_aws():
            _make_bucket(bucket)
            yield f"s3://{bucket}/runs/r1"
        return
    monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("moto_server"))
    _make_bucket(bucket)
    yield f"s3://{bucket}/runs/r1"


@pytest.fixture
def sample_dir(tmp_path):
    """A small artifact folder with nested files, an empty file and a multi-MiB file."""
    import os

    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "empty.txt").write_bytes(b"")
    (src / "sub" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "sub" / "deep" / "x.txt").write_text("hello")
    return src
