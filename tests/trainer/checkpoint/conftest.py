"""Fixtures shared by the checkpoint tests."""

from __future__ import annotations

import uuid

import pytest

from artifacts.run import Run


@pytest.fixture
def s3_run(monkeypatch):
    """A run in moto's S3; every byte a download moves is counted by key: ``(run, got)``."""
    import boto3
    from moto import mock_aws

    from artifacts import s3

    got: dict[str, int] = {}
    real = s3.S3Store.download_file

    def counting(self, key, local_path, **kw):
        entry = real(self, key, local_path, **kw)
        got[key] = got.get(key, 0) + entry.size
        return entry

    monkeypatch.setattr(s3.S3Store, "download_file", counting)
    bucket = f"ckpt-{uuid.uuid4().hex[:10]}"
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield Run(f"s3://{bucket}/runs/r1"), got
