"""Storage component: the run bucket (data, checkpoints, published models, SSM logs) and its key.

Objects are encrypted with SSE-KMS under a customer-managed key (rotation on, S3 bucket keys on
so hundreds of PUTs per second do not each call KMS): reading the corpus or a model then needs
``kms:Decrypt`` on this key as well as ``s3:GetObject``, and every use is in CloudTrail. When the
program created the network, the bucket also refuses this cluster's roles outside the VPC's S3
endpoint, and that endpoint reaches this bucket only (see :mod:`infra.egress`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER
from infra.egress import bucket_key_policy, deny_outside_vpce_statement, s3_endpoint_policy
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
    key_arn: pulumi.Output[str]
    run_prefix: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: StorageArgs,
        *,
        region: pulumi.Input[str],
        s3_endpoint_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        tags = {TAG_CLUSTER: args.cluster_name}
        cluster = args.cluster_name

        account = aws.get_caller_identity_output(opts=invoke).account_id
        partition = aws.get_partition_output(opts=invoke).partition
        key = aws.kms.Key(
            f"{name}-bucket-key",
            description=f"{cluster} run bucket (SSE-KMS)",
            key_usage="ENCRYPT_DECRYPT",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.all(account, partition, region).apply(
                lambda v: to_json(
                    bucket_key_policy(account=v[0], partition=v[1], cluster=cluster, region=v[2])
                )
            ),
            tags=tags,
            opts=child,
        )
        aws.kms.Alias(
            f"{name}-bucket-key-alias",
            name=f"alias/{cluster}-bucket",
            target_key_id=key.key_id,
            opts=child,
        )

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
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": key.arn,
                    },
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, s3_endpoint_id).apply(
                lambda v: to_json(bucket_policy(v[0], cluster, v[1]))
            ),
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

        if s3_endpoint_id is not None:
            aws.ec2.VpcEndpointPolicy(
                f"{name}-s3-endpoint-policy",
                vpc_endpoint_id=s3_endpoint_id,
                policy=bucket.arn.apply(lambda arn: to_json(s3_endpoint_policy(arn))),
                opts=child,
            )

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.key_arn = key.arn
        self.run_prefix = bucket.bucket.apply(lambda b: f"s3://{b}/{RUNS_PREFIX}")
        self.register_outputs(
            {
                "bucket": self.bucket_name,
                "bucket_arn": self.bucket_arn,
                "key_arn": self.key_arn,
                "run_prefix": self.run_prefix,
            }
        )


def bucket_policy(bucket_arn: str, cluster: str, vpce_id: str | None) -> dict:
    """TLS only; with a created network also: this cluster's roles only through its S3 endpoint."""
    doc = tls_only_bucket_policy(bucket_arn)
    if vpce_id is not None:
        doc["Statement"].append(deny_outside_vpce_statement(bucket_arn, cluster, vpce_id))
    return doc
