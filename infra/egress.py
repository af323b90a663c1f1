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

from typing import Any

from artifacts.node import TAG_CLUSTER

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

#: KMS calls S3 makes for a principal reading or writing SSE-KMS objects.
KMS_S3_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey")

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
    _check_bucket_arn(bucket_arn)
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
    _check_bucket_arn(bucket_arn)
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


def bucket_key_policy(*, account: str, partition: str, cluster: str, region: str) -> dict[str, Any]:
    """Key policy of the bucket's customer-managed KMS key.

    The account (its IAM administrators: the owner who runs ``pulumi up`` and downloads models)
    administers and uses the key through IAM; this cluster's node and controller roles (by their
    ``twostage:cluster`` tag) may use it only through S3 in this region. It is a symmetric
    encryption key: ``kms:Sign`` does not exist for it, so no role can sign with it.
    """
    root = f"arn:{partition}:iam::{account}:root"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "ClusterRolesOnlyThroughS3",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": "kms:*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {f"aws:PrincipalTag/{TAG_CLUSTER}": cluster},
                    "StringNotEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"},
                },
            },
        ],
    }


def kms_use_statement(key_arn: str, region: str) -> dict[str, Any]:
    """IAM statement for a role that reads/writes SSE-KMS objects: the key, only via S3."""
    if not key_arn.startswith("arn:") or ":kms:" not in key_arn or "*" in key_arn:
        raise ValueError(f"not a single KMS key ARN: {key_arn!r}")
    return {
        "Sid": "BucketKeyViaS3",
        "Effect": "Allow",
        "Action": list(KMS_S3_ACTIONS),
        "Resource": [key_arn],
        "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
    }


def _check_bucket_arn(bucket_arn: str) -> None:
    if not bucket_arn.startswith("arn:") or ":s3:::" not in bucket_arn or "*" in bucket_arn:
        raise ValueError(f"not a single bucket ARN: {bucket_arn!r}")
