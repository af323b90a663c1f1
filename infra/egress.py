"""Pure decisions about what the machines may reach and who may use the bucket's key.

Plain functions over plain data (tested without the Pulumi engine), used by the network and
storage components once ARNs and ids are known.

Without ``allowInternetEgress`` the nodes' subnet has no route to the internet: the machines
reach AWS only through VPC endpoints — the S3 gateway endpoint (its policy names the run bucket
and nothing else) and one interface endpoint per API in :data:`INTERFACE_SERVICES`. The bucket
refuses this cluster's roles unless the request came through that S3 endpoint
(``aws:SourceVpce``), so credentials taken off a node are useless outside the VPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from artifacts.node import TAG_CLUSTER
from infra.policies import check_bucket_arn

#: Interface endpoints the machines need, and who calls each (docs/provision.md lists the cost):
#: the SSM agent (ssm, ssmmessages, ec2messages: Run Command and Session Manager), the dead-man
#: switch and the controller (autoscaling), the controller's describe and spot-price calls (ec2).
#: Not needed: STS (instance-profile credentials come from IMDS), KMS (S3 calls KMS for SSE-KMS
#: on the caller's behalf), CloudWatch Logs (command output goes to the bucket).
INTERFACE_SERVICES = ("ssm", "ssmmessages", "ec2messages", "autoscaling", "ec2")

#: The S3 actions a machine of the cluster performs through the gateway endpoint.
S3_ENDPOINT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetBucketLocation",
    "s3:GetEncryptionConfiguration",
)

#: KMS calls S3 makes for a principal reading or writing SSE-KMS objects (GenerateDataKey on a
#: write, Decrypt on a read or a multipart upload; Encrypt as the issue lists it, same conditions).
KMS_S3_ACTIONS = ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*")
#: The encryption context S3 passes to KMS: the bucket ARN (bucket keys on) or the object ARN.
S3_CONTEXT_KEY = "kms:EncryptionContext:aws:s3:arn"
#: Key administration without use (no Encrypt/Decrypt/GenerateDataKey*/ReEncrypt*/Sign, no
#: CreateGrant, which would hand out use): what ``pulumi up`` and an administrator call.
KEY_ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)

#: Prices used in docs/provision.md's cost table (us-east-1, USD, AWS price pages, 2026).
INTERFACE_ENDPOINT_USD_PER_HOUR_PER_AZ = 0.01
INTERFACE_ENDPOINT_USD_PER_GB = 0.01
NAT_GATEWAY_USD_PER_HOUR = 0.045
NAT_GATEWAY_USD_PER_GB = 0.045
HOURS_PER_MONTH = 730


def interface_service_name(region: str, service: str) -> str:
    """``com.amazonaws.<region>.<service>``: the endpoint service of one AWS API."""
    return f"com.amazonaws.{region}.{service}"


def monthly_cost(*, gb_per_month: float = 0.0, azs: int = 1) -> dict[str, float]:
    """USD per month of the interface endpoints vs one NAT gateway, for ``gb_per_month``.

    S3 traffic is free either way (gateway endpoint); only API traffic (SSM, Auto Scaling, EC2)
    and, with a NAT, whatever else leaves counts toward ``gb_per_month``.
    """
    endpoints = len(INTERFACE_SERVICES) * azs * INTERFACE_ENDPOINT_USD_PER_HOUR_PER_AZ
    return {
        "endpoints": round(
            endpoints * HOURS_PER_MONTH + gb_per_month * INTERFACE_ENDPOINT_USD_PER_GB, 2
        ),
        "nat_gateway": round(
            NAT_GATEWAY_USD_PER_HOUR * azs * HOURS_PER_MONTH
            + gb_per_month * NAT_GATEWAY_USD_PER_GB,
            2,
        ),
    }


def s3_endpoint_policy(bucket_arn: str) -> dict[str, Any]:
    """Gateway endpoint policy: through this endpoint, only the run bucket.

    Boot needs no other bucket: the DLAMI carries the SSM agent and the Python, the project and
    its wheels come from the run bucket. (The SSM agent's self-update and Distributor packages,
    which live in AWS-owned buckets, are thereby off; the agent keeps running the AMI's version.)
    """
    check_bucket_arn(bucket_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunBucketOnly",
                "Effect": "Allow",
                "Principal": "*",
                "Action": list(S3_ENDPOINT_ACTIONS),
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
            }
        ],
    }


def deny_outside_vpce_statement(bucket_arn: str, cluster: str, vpce_id: str) -> dict[str, Any]:
    """Bucket-policy statement: this cluster's roles (by tag) only through the S3 endpoint.

    Keyed on the roles' ``twostage:cluster`` tag rather than their ARNs so the bucket policy does
    not wait on the roles (which wait on the bucket); the owner's own principals are untagged and
    keep working from their laptop.
    """
    check_bucket_arn(bucket_arn)
    if not vpce_id.startswith("vpce-"):
        raise ValueError(f"not a VPC endpoint id: {vpce_id!r}")
    return {
        "Sid": "ClusterRolesOnlyThroughTheVpcEndpoint",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {
            "StringEquals": {f"aws:PrincipalTag/{TAG_CLUSTER}": cluster},
            "StringNotEquals": {"aws:SourceVpce": vpce_id},
        },
    }


def bucket_key_policy(
    *,
    account: str,
    partition: str,
    region: str,
    bucket_arn: str,
    cluster_role_arns: Sequence[str],
    owner_arns: Sequence[str],
) -> dict[str, Any]:
    """Key policy of the bucket's customer-managed KMS key: every principal named, by ARN.

    - the account (``:root``, i.e. its IAM administrators) may **administer** the key — describe,
      rotate, tag, change the policy, schedule deletion — but not use it: AWS requires a key
      policy to keep an administrator, or the key becomes unmanageable;
    - the cluster's node and controller roles and the owner principals (who runs ``pulumi up``,
      which uploads the bundle and wheelhouse, plus ``ownerPrincipalArn``: ``invoke pretrain``
      uploads, ``invoke download`` reads) may use it only as S3 does for this bucket:
      ``kms:ViaService`` = S3 in this region and the encryption context ``aws:s3:arn`` naming the
      bucket (with S3 bucket keys on it is the bucket ARN; an object ARN without them);
    - the cluster roles are denied every other KMS call on this key, whatever IAM gives them;
    - nobody may ``kms:Sign`` (a symmetric key cannot sign at all; the deny says so in policy).

    KMS refuses a policy naming a principal that does not exist, so the ARNs are the created
    roles' own (the key is planned after them) and the owner's existing user or role.
    """
    check_bucket_arn(bucket_arn)
    cluster = sorted(set(cluster_role_arns))
    owners = sorted(set(owner_arns))
    for arn in (*cluster, *owners):
        _check_principal_arn(arn, partition, account)
    if len(cluster) != 2:
        raise ValueError(f"expected the node and the controller role, got {cluster}")
    via_s3 = {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}
    this_bucket = {
        **via_s3,
        "StringLike": {S3_CONTEXT_KEY: [bucket_arn, f"{bucket_arn}/*"]},
    }
    users = [*cluster, *[o for o in owners if o not in cluster]]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersTheKeyOnly",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                "Action": list(KEY_ADMIN_ACTIONS),
                "Resource": "*",
            },
            {
                "Sid": "UseOnlyThroughS3ForTheRunBucket",
                "Effect": "Allow",
                "Principal": {"AWS": users},
                "Action": list(KMS_S3_ACTIONS),
                "Resource": "*",
                "Condition": this_bucket,
            },
            {
                # DescribeKey carries no encryption context, so it is allowed via S3 alone.
                "Sid": "DescribeThroughS3",
                "Effect": "Allow",
                "Principal": {"AWS": users},
                "Action": ["kms:DescribeKey"],
                "Resource": "*",
                "Condition": via_s3,
            },
            {
                "Sid": "ClusterRolesNothingElse",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": "kms:*",
                "Resource": "*",
                "Condition": {
                    "ArnEquals": {"aws:PrincipalArn": cluster},
                    "StringNotEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"},
                },
            },
            {
                "Sid": "NobodySigns",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": "kms:Sign",
                "Resource": "*",
            },
        ],
    }


def _check_principal_arn(arn: str, partition: str, account: str) -> None:
    # A wildcard or a malformed principal would open the key or make KMS refuse the policy.
    prefix = f"arn:{partition}:iam::{account}:"
    if (
        not arn.startswith(prefix)
        or "*" in arn
        or arn[len(prefix) :].split("/")[0]
        not in (
            "role",
            "user",
        )
    ):
        raise ValueError(f"not an IAM role or user of account {account}: {arn!r}")

