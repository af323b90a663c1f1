"""Pure decisions of the infra program: IAM/bucket policy documents and per-type hardware facts.

Plain functions over plain data, tested without the Pulumi engine. Components call them inside
``Output.apply`` once ARNs are known.
"""

from __future__ import annotations

import json
from typing import Any

SSM_MANAGED_POLICY = "AmazonSSMManagedInstanceCore"

#: Bucket-level actions the nodes need: list for resume/retention, location for the SDK, the
#: encryption config because the SSM agent checks it before uploading command output to ``logs/``.
BUCKET_ACTIONS = (
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:ListBucketMultipartUploads",
    "s3:GetEncryptionConfiguration",
)
#: Object-level actions: read/write checkpoints and models, delete for retention, multipart.
OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)

#: EFA interfaces an instance type supports (one per network card where it has several).
#: Types not listed get a single ordinary ENI. Source: EC2 "Elastic Fabric Adapter" supported types.
EFA_INTERFACES = {
    "p4d.24xlarge": 4,
    "p4de.24xlarge": 4,
    "p5.48xlarge": 32,
    "p5e.48xlarge": 32,
    "p5en.48xlarge": 16,
    "p3dn.24xlarge": 1,
    "g5.48xlarge": 1,
    "g6.48xlarge": 1,
    "g6e.48xlarge": 4,
    "trn1.32xlarge": 8,
}


def efa_interface_count(instance_type: str, override: int | None = None) -> int:
    """EFA interfaces to attach: the override when given, else the type's maximum (0 if none)."""
    if override is not None:
        return override
    return EFA_INTERFACES.get(instance_type, 0)


def assume_role_policy() -> dict[str, Any]:
    """Trust policy: only EC2 (the nodes' instance profile) may assume the node role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def bucket_access_policy(bucket_arn: str) -> dict[str, Any]:
    """The nodes' S3 permissions: this bucket and its objects, nothing else (no ``*`` resource)."""
    _check_bucket_arn(bucket_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunBucket",
                "Effect": "Allow",
                "Action": list(BUCKET_ACTIONS),
                "Resource": [bucket_arn],
            },
            {
                "Sid": "RunObjects",
                "Effect": "Allow",
                "Action": list(OBJECT_ACTIONS),
                "Resource": [f"{bucket_arn}/*"],
            },
        ],
    }


def tls_only_bucket_policy(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy that denies every request not made over TLS (and TLS older than 1.2)."""
    _check_bucket_arn(bucket_arn)
    resources = [bucket_arn, f"{bucket_arn}/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            {
                "Sid": "DenyOutdatedTls",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
            },
        ],
    }


def to_json(document: dict[str, Any]) -> str:
    """Stable JSON for a policy document (sorted keys, so plans do not show spurious diffs)."""
    return json.dumps(document, sort_keys=True)


def _check_bucket_arn(bucket_arn: str) -> None:
    # A wildcard or a missing ARN here would silently widen the node role to every bucket.
    if not bucket_arn.startswith("arn:") or ":s3:::" not in bucket_arn or "*" in bucket_arn:
        raise ValueError(f"not a single bucket ARN: {bucket_arn!r}")
