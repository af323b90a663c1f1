"""`invoke sign`: the owner signs a finished run on their machine; stage 2 verifies it offline."""

from __future__ import annotations

import pytest

from artifacts.attest import sign_run
from artifacts.download import download_verified
from artifacts.errors import ArtifactError, VerificationError
from artifacts.manifest import SIGNATURE_NAME
from artifacts.publish import publish_dir
from artifacts.signing import generate_keypair


@pytest.fixture
def finished_run(tmp_path):
    """A run whose final/ was published unsigned, as the cluster publishes it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x01" * 1000)
    (model / "config.json").write_text("{}")
    run = tmp_path / "bucket" / "runs" / "r1"
    publish_dir(model, str(run / "final"), metadata={"global_step": 40, "converged": True})
    assert not (run / "final" / SIGNATURE_NAME).exists()
    return run


def test_the_owner_signs_and_download_verifies_offline(finished_run, tmp_path):
    priv, pub = generate_keypair(tmp_path / "owner")
    manifest = sign_run(str(finished_run), priv)
    assert manifest.metadata["global_step"] == 40
    assert (finished_run / "final" / SIGNATURE_NAME).read_bytes().startswith(b"ed25519 ")
    got = download_verified(str(finished_run / "final"), tmp_path / "dl", public_key=pub)
    assert len(got.files) == 2
    # Signing again with the same key is a no-op; another key is refused unless --overwrite.
    sign_run(str(finished_run), priv)
    other, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(VerificationError, match="already signed, not by this key"):
        sign_run(str(finished_run), other)
    sign_run(str(finished_run), other, overwrite=True)
    download_verified(str(finished_run / "final"), tmp_path / "dl2", public_key=other_pub)


def test_a_listing_that_does_not_match_the_manifest_is_never_signed(finished_run, tmp_path):
    priv, _ = generate_keypair(tmp_path / "owner")
    (finished_run / "final" / "extra.bin").write_bytes(b"planted")
    with pytest.raises(VerificationError, match="extra.bin: unexpected file"):
        sign_run(str(finished_run), priv)
    (finished_run / "final" / "extra.bin").unlink()
    (finished_run / "final" / "config.json").write_text('{"changed": 1}')
    with pytest.raises(VerificationError, match="config.json: size mismatch"):
        sign_run(str(finished_run), priv)
    assert not (finished_run / "final" / SIGNATURE_NAME).exists()


def test_an_unfinished_run_or_a_bad_key_is_a_one_line_error(tmp_path, finished_run):
    priv, _ = generate_keypair(tmp_path / "owner")
    with pytest.raises(ArtifactError, match="no published model; the run has not finished"):
        sign_run(str(tmp_path / "bucket" / "runs" / "nope"), priv)
    (tmp_path / "junk").write_text("x")
    with pytest.raises(ArtifactError, match="not an unencrypted PEM private key"):
        sign_run(str(finished_run), tmp_path / "junk")


def test_an_sse_kms_bucket_signs_and_downloads_like_any_other(sample_dir, tmp_path, monkeypatch):
    """The stack's bucket encrypts with a customer-managed KMS key by default: the owner's sign
    and stage 2's verified download work on it unchanged (S3 decrypts for a caller with the key)."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        key = boto3.client("kms").create_key(Description="run bucket")["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="twostage-kms")
        s3.put_bucket_encryption(
            Bucket="twostage-kms",
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": key,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        run = "s3://twostage-kms/runs/r1"
        publish_dir(sample_dir, f"{run}/final")
        head = s3.head_object(Bucket="twostage-kms", Key="runs/r1/final/MANIFEST.json")
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key
        priv, pub = generate_keypair(tmp_path / "owner")
        sign_run(run, priv)
        got = download_verified(f"{run}/final", tmp_path / "model", public_key=pub)
        assert (tmp_path / "model" / "sub" / "weights.bin").stat().st_size == got.by_path()[
            "sub/weights.bin"
        ].size
