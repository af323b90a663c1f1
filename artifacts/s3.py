"""S3 backend: the only module that talks to boto3.

boto3's transfer manager gives multipart uploads, concurrent ranged downloads and retries;
``AWS_ENDPOINT_URL`` (boto3's own variable) points it at any S3-compatible endpoint, moto in tests.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from artifacts.errors import ArtifactError
from artifacts.hashing import HashingReader, HashingWriter
from artifacts.manifest import FileEntry
from artifacts.store_api import ObjectInfo, Progress, Store, join_key, progress_callback

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MiB = 1024 * 1024

#: Part size / threshold / concurrency of the transfer manager. 16 MiB parts keep a 100 GB
#: checkpoint far below S3's 10,000-part limit; 10 threads saturate a node's S3 bandwidth.
PART_SIZE = int(os.environ.get("TWOSTAGE_S3_PART_MB", "16")) * MiB
CONCURRENCY = int(os.environ.get("TWOSTAGE_S3_CONCURRENCY", "10"))


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def make_client():
    """A thread-safe S3 client with adaptive retries; honours ``AWS_ENDPOINT_URL``.

    One client per process and AWS environment: building one loads botocore's service models
    (tenths of a second, seconds on a loaded box), which a small checkpoint commit cannot afford.
    The key holds everything that changes which endpoint or identity a new client would pick up.
    """
    key = (os.getpid(),) + tuple(os.environ.get(v) for v in _CLIENT_ENV)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = _new_client()
        return client


_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


def _new_client():
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        config=Config(
            retries={"mode": "adaptive", "max_attempts": 10},
            max_pool_connections=max(32, CONCURRENCY * 2),
        ),
    )


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=CONCURRENCY,
        use_threads=True,
    )


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Translate botocore's exceptions into one-line :class:`ArtifactError` messages."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from s3transfer.exceptions import S3UploadFailedError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise ArtifactError(
            f"{what}: AWS credentials not found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure`"
        ) from None
    except EndpointConnectionError as err:
        raise ArtifactError(
            f"{what}: cannot reach the S3 endpoint ({err}); check AWS_ENDPOINT_URL / network"
        ) from None
    except S3UploadFailedError as err:
        raise ArtifactError(f"{what}: upload failed: {_short(err)}") from None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            raise ArtifactError(
                f"{what}: bucket does not exist (create it, or check the URI)"
            ) from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ArtifactError(f"{what}: not found") from None
        if code in (
            "AccessDenied",
            "403",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
        ):
            raise ArtifactError(
                f"{what}: access denied ({code}); check the credentials and the bucket policy"
            ) from None
        raise ArtifactError(f"{what}: S3 error {code}: {_short(err)}") from None


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:300]


class S3Store(Store):
    """``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", _client=None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # One client per store tree (children share it): created on first use, so a store made
        # inside moto's mock_aws or after AWS_ENDPOINT_URL changed talks to the right endpoint.
        self._client = _client

    @property
    def client(self):
        if self._client is None:
            self._client = make_client()
        return self._client

    @classmethod
    def from_uri(cls, uri: str) -> S3Store:
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ArtifactError(
                f"invalid S3 URI {uri!r}: bucket name {bucket!r} is not valid (expected s3://bucket/prefix)"
            )
        return cls(bucket, prefix)

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def child(self, rel: str) -> S3Store:
        return S3Store(self.bucket, join_key(self.prefix, rel), _client=self._client)

    def upload_file(self, local_path: Path, key: str, *, progress: Progress = False) -> FileEntry:
        local_path = Path(local_path)
        try:
            size = local_path.stat().st_size
            f = open(local_path, "rb")
        except FileNotFoundError:
            raise ArtifactError(f"{local_path}: no such file") from None
        with (
            f,
            progress_callback(progress, size, f"upload {local_path.name}") as cb,
            aws_errors(f"{self.uri}/{key}"),
        ):
            reader = HashingReader(f, cb)
            self.client.upload_fileobj(
                reader, self.bucket, self._key(key), Config=transfer_config()
            )
        if reader.size != size:
            raise ArtifactError(
                f"{local_path}: changed while uploading ({size} → {reader.size} bytes)"
            )
        return FileEntry(key, reader.size, reader.hexdigest())

    def download_file(self, key: str, local_path: Path, *, progress: Progress = False) -> FileEntry:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        what = f"{self.uri}/{key}"
        with aws_errors(what):
            # A bar of our own needs the size; a caller's callback does not (saves a HEAD).
            size = 0
            if progress and not callable(progress):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                size = head["ContentLength"]
            with (
                open(local_path, "wb") as f,
                progress_callback(progress, size, f"download {key.rsplit('/', 1)[-1]}") as cb,
            ):
                writer = HashingWriter(f, cb)
                self.client.download_fileobj(
                    self.bucket, self._key(key), writer, Config=transfer_config()
                )
        return FileEntry(key, writer.size, writer.hexdigest())

    def put_bytes(self, key: str, data: bytes) -> None:
        with aws_errors(f"{self.uri}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with aws_errors(f"{self.uri}/{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with aws_errors(f"{self.uri}/{key}"):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ArtifactError as err:
            if str(err).endswith(": not found"):
                return False
            raise
        except ClientError:  # pragma: no cover - translated above
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self._key(prefix)
        if full:
            full += "/"
        base = self.prefix + "/" if self.prefix else ""
        out: list[ObjectInfo] = []
        with aws_errors(f"{self.uri}/{prefix}".rstrip("/")):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            ):
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(
                            obj["Key"][len(base) :],
                            obj["Size"],
                            obj["LastModified"].timestamp(),
                            str(obj.get("ETag", "")).strip('"'),
                        )
                    )
        return out

    def delete(self, keys: list[str]) -> None:
        with aws_errors(self.uri):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
                if batch:
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
