"""Storage component: the run bucket (data, checkpoints, published models, SSM logs)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER
from infra.policies import tls_only_bucket_policy, to_json

#: Incomplete multipart uploads (an interrupted checkpoint upload) are aborted after this long.
ABORT_MULTIPART_DAYS = 3
RUNS_PREFIX = "runs"


@dataclass(frozen=True)
class StorageArgs:
    cluster_name: str
    bucket_prefix: str
    noncurrent_retention_days: int
    force_destroy: bool = False


class Storage(pulumi.ComponentResource):
    """Versioned, encrypted, private, TLS-only bucket with lifecycle rules for checkpoints."""

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    run_prefix: pulumi.Output[str]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("twostage:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {TAG_CLUSTER: args.cluster_name}

        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket_prefix=args.bucket_prefix,
            force_destroy=args.force_destroy,
            tags=tags,
            opts=child,
        )
        public_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access-block",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: to_json(tls_only_bucket_policy(arn))),
            # S3 rejects policy writes racing the public-access-block update.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_block]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "abort-incomplete-multipart-uploads",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "abort_incomplete_multipart_upload": {
                        "days_after_initiation": ABORT_MULTIPART_DAYS
                    },
                },
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "noncurrent_version_expiration": {
                        "noncurrent_days": args.noncurrent_retention_days
                    },
                    "expiration": {"expired_object_delete_marker": True},
                },
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.run_prefix = bucket.bucket.apply(lambda b: f"s3://{b}/{RUNS_PREFIX}")
        self.register_outputs(
            {
                "bucket": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "run_prefix": self.run_prefix,
            }
        )
