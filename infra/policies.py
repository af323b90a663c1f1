"""Pure decisions of the infra program: IAM and bucket policy documents — the nodes' role, what
both roles share (trust, the SSM agent's calls, the action lists, the ARN checks), the bucket's
TLS rule.

Plain functions over plain data, tested without the Pulumi engine. Components call them inside
``Output.apply`` once ARNs are known. The controller's own policy (:mod:`infra.controller_policy`)
builds on the action lists and ARN checks defined here; the EFA facts of an instance type live in
:mod:`infra.efa`.

Who may do what (the security model, see docs/provision.md "IAM"):

- **nodes** run every PyPI dependency of the trainer as root, so their role is the smallest that
  works: the SSM agent's own calls (not ``AmazonSSMManagedInstanceCore``, which also grants
  ``ssm:GetParameter(s)`` on every parameter of the account; those are explicitly denied), the
  bucket with writes limited to ``runs/`` (the bootstrap bundle every later node runs as root and
  the controller's ``control/`` objects are read-only to them, with an explicit deny), and
  terminating themselves out of their own Auto Scaling group (the dead-man switch);
- **the controller**: :mod:`infra.controller_policy`.
"""

from __future__ import annotations

import json
from typing import Any

from artifacts.node import BOOTSTRAP_PREFIX, CONTROL_PREFIX, RUNS_PREFIX

#: What the SSM agent calls: ``AmazonSSMManagedInstanceCore`` minus ``ssm:GetParameter(s)``.
SSM_AGENT_ACTIONS = (
    "ssm:DescribeAssociation",
    "ssm:DescribeDocument",
    "ssm:GetDeployablePatchSnapshotForInstance",
    "ssm:GetDocument",
    "ssm:GetManifest",
    "ssm:ListAssociations",
    "ssm:ListInstanceAssociations",
    "ssm:PutComplianceItems",
    "ssm:PutConfigurePackageResult",
    "ssm:PutInventory",
    "ssm:UpdateAssociationStatus",
    "ssm:UpdateInstanceAssociationStatus",
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)
#: Parameter Store reads nobody on a node needs; denied explicitly so no attached policy adds them.
DENIED_PARAMETER_ACTIONS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath")

#: Bucket-level actions: list for resume/retention, location for the SDK, the encryption config
#: because the SSM agent checks it before uploading command output to ``logs/``.
BUCKET_ACTIONS = (
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:ListBucketMultipartUploads",
    "s3:GetEncryptionConfiguration",
)
READ_OBJECT_ACTIONS = ("s3:GetObject",)
#: Object writes: checkpoints, models, logs; delete for retention; multipart.
WRITE_OBJECT_ACTIONS = (
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)


def assume_role_policy() -> dict[str, Any]:
    """Trust policy: only EC2 (an instance profile) may assume the role."""
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


def ssm_agent_policy() -> dict[str, Any]:
    """What the SSM agent needs (Run Command, Session Manager), and no Parameter Store reads."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SsmAgent",
                "Effect": "Allow",
                "Action": list(SSM_AGENT_ACTIONS),
                "Resource": "*",  # these agent calls have no resource-level permissions
            },
            {
                "Sid": "NoParameterStore",
                "Effect": "Deny",
                "Action": list(DENIED_PARAMETER_ACTIONS),
                "Resource": "*",
            },
        ],
    }


def bucket_access_policy(bucket_arn: str) -> dict[str, Any]:
    """The nodes' S3 permissions: read the bucket, write only under ``runs/``.

    ``bootstrap/`` (the source bundle every future node runs as root) and ``control/`` (the
    controller's heartbeat and run requests) are denied for writes explicitly, so no other policy
    can widen this by accident.
    """
    check_bucket_arn(bucket_arn)
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
                "Sid": "ReadObjects",
                "Effect": "Allow",
                "Action": list(READ_OBJECT_ACTIONS),
                "Resource": [f"{bucket_arn}/*"],
            },
            {
                "Sid": "WriteRuns",
                "Effect": "Allow",
                "Action": list(WRITE_OBJECT_ACTIONS),
                "Resource": [f"{bucket_arn}/{RUNS_PREFIX}*"],
            },
            {
                "Sid": "ReadOnlyBootstrapAndControl",
                "Effect": "Deny",
                "Action": list(WRITE_OBJECT_ACTIONS),
                "Resource": [
                    f"{bucket_arn}/{BOOTSTRAP_PREFIX}*",
                    f"{bucket_arn}/{CONTROL_PREFIX}*",
                ],
            },
        ],
    }


def node_self_terminate_policy(group_arn: str) -> dict[str, Any]:
    """A node may take itself out of *its* group (dead-man switch), decrementing desired capacity.

    Scoped to the group's ARN: the call cannot touch another group. (IAM cannot restrict it to
    the caller's own instance id; a node could terminate a peer of the same run, no more.)
    """
    check_group_arn(group_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "LeaveOwnGroup",
                "Effect": "Allow",
                "Action": ["autoscaling:TerminateInstanceInAutoScalingGroup"],
                "Resource": [group_arn],
            }
        ],
    }


def tls_only_bucket_policy(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy that denies every request not made over TLS (and TLS older than 1.2)."""
    check_bucket_arn(bucket_arn)
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


def check_bucket_arn(bucket_arn: str) -> None:
    """Refuse anything but one bucket's ARN (``ValueError``) before it goes into a document."""
    # A wildcard or a missing ARN here would silently widen a role to every bucket.
    if not bucket_arn.startswith("arn:") or ":s3:::" not in bucket_arn or "*" in bucket_arn:
        raise ValueError(f"not a single bucket ARN: {bucket_arn!r}")


def check_group_arn(group_arn: str) -> None:
    """Refuse anything but one Auto Scaling group's ARN (``ValueError``): no wildcard group."""
    if (
        not group_arn.startswith("arn:")
        or ":autoscaling:" not in group_arn
        or "autoScalingGroupName/" not in group_arn
        or group_arn.endswith("/*")
    ):
        raise ValueError(f"not a single Auto Scaling group ARN: {group_arn!r}")
