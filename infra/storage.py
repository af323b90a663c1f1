"""Storage component: the run bucket (data, checkpoints, published models, SSM logs) and its key.

Objects are encrypted with SSE-KMS under a customer-managed key (rotation on, S3 bucket keys on
so hundreds of PUTs per second do not each call KMS): reading the corpus or a model then needs
``kms:Decrypt`` on this key as well as ``s3:GetObject``, and every use is in CloudTrail. The key
policy (:func:`infra.egress.bucket_key_policy`) names its users by ARN — the node and controller
roles (planned first, :mod:`infra.identity`), the deployer and ``ownerPrincipalArn`` — each only
through S3 for this bucket; the account keeps administration only. When the program created the
network, the bucket also refuses this cluster's roles outside the VPC's S3
endpoint, and that endpoint reaches this bucket only (see :mod:`infra.egress`).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    owner_principal_arn: str | None = None
    """The owner's IAM role or user besides the deployer, named in the key policy (downloads)."""


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
        cluster_role_arns: Sequence[pulumi.Input[str]],
        s3_endpoint_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        tags = {TAG_CLUSTER: args.cluster_name}
        cluster = args.cluster_name

        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket_prefix=args.bucket_prefix,
            force_destroy=args.force_destroy,
            tags=tags,
            opts=child,
        )
        caller = aws.get_caller_identity_output(opts=invoke)
        partition = aws.get_partition_output(opts=invoke).partition
        # Who runs `pulumi up` (it uploads the bundle and the wheelhouse under this key): its IAM
        # role or user, not the session (a session ARN changes every login).
        deployer = aws.iam.get_session_context_output(arn=caller.arn, opts=invoke).issuer_arn
        owners = [deployer, *([args.owner_principal_arn] if args.owner_principal_arn else [])]
        key = aws.kms.Key(
            f"{name}-bucket-key",
            description=f"{cluster} run bucket (SSE-KMS)",
            key_usage="ENCRYPT_DECRYPT",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            # Depends on the roles (Outputs): planned after them, naming them by their real ARNs.
            policy=pulumi.Output.all(
                caller.account_id,
                partition,
                region,
                bucket.arn,
                pulumi.Output.all(*cluster_role_arns),
                pulumi.Output.all(*owners),
            ).apply(
                lambda v: to_json(
                    bucket_key_policy(
                        account=v[0],
                        partition=v[1],
                        region=v[2],
                        bucket_arn=v[3],
                        cluster_role_arns=v[4],
                        owner_arns=v[5],
                    )
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
        encryption = aws.s3.BucketServerSideEncryptionConfiguration(
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

        # Everything written through this name (the bundle, the wheelhouse) waits for the default
        # encryption, hence for the key and its policy: never an SSE-S3 object, never a write
        # before the key names its writer.
        self.bucket_name = pulumi.Output.all(bucket.bucket, encryption.id).apply(lambda v: v[0])
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
