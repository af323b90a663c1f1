"""Pure decisions of the infra program: IAM/bucket policy documents and per-type hardware facts.

Plain functions over plain data, tested without the Pulumi engine. Components call them inside
``Output.apply`` once ARNs are known.

Who may do what (the security model, see docs/provision.md "IAM"):

- **nodes** run every PyPI dependency of the trainer as root, so their role is the smallest that
  works: the SSM agent's own calls (not ``AmazonSSMManagedInstanceCore``, which also grants
  ``ssm:GetParameter(s)`` on every parameter of the account; those are explicitly denied), the
  bucket with writes limited to ``runs/`` (the bootstrap bundle every later node runs as root and
  the controller's ``control/`` objects are read-only to them, with an explicit deny), and
  terminating themselves out of their own Auto Scaling group (the dead-man switch);
- **the controller** may describe, scale *this* group (ARN + cluster tag), send Run Command
  documents to the instances *this group* launched (the ``aws:autoscaling:groupName`` tag, which
  only Auto Scaling can set: a user who may tag instances cannot put one in reach), only with
  the project's own document, read and cancel Run Command invocations in this region (IAM has no
  resource type or condition key that narrows these to its own commands), and read/write the
  bucket. It cannot list commands.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from artifacts.node import (
    BOOTSTRAP_PREFIX,
    CONTROL_PREFIX,
    GROUP_TAG,
    RUNS_PREFIX,
    TAG_CLUSTER,
    run_document_name,
)
from infra.errors import InfraError

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
#: Run Command reads and cancels the controller makes (``trainer/launch/ssm.py``). IAM has no
#: resource type or service condition key for either (see ``controller_policy``).
COMMAND_READ_CANCEL_ACTIONS = ("ssm:GetCommandInvocation", "ssm:CancelCommand")
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

#: EFA interfaces an instance type supports (one per network card where it has several).
#: Types not listed support none. Source: EC2 "Elastic Fabric Adapter" supported instance types
#: and the "network cards" column of each type's specifications.
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
    """EFA interfaces for one type: the override when given, else the type's maximum (0 if none)."""
    return efa_interfaces_for([instance_type], override)


def efa_interfaces_for(instance_types: Sequence[str], override: int | None = None) -> int:
    """EFA interfaces for a launch template shared by ``instance_types``, validated.

    One template serves every allowed type, so the count must fit the smallest of them: 32 on a
    p5 would make every p4d launch fail at RunInstances (4 network cards). An override above what
    a type supports is refused here, before anything is planned.
    """
    if not instance_types:
        raise ValueError("no instance type")
    supported = min(EFA_INTERFACES.get(t, 0) for t in instance_types)
    if override is None:
        return supported
    if override > supported:
        worst = min(instance_types, key=lambda t: EFA_INTERFACES.get(t, 0))
        raise InfraError(
            f"twostage:efaInterfaces: {override} EFA interfaces, but {worst} supports "
            f"{EFA_INTERFACES.get(worst, 0)} (fix it with `pulumi config set "
            f"twostage:efaInterfaces {supported}` or leave it empty for the maximum)"
        )
    return override


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
    _check_group_arn(group_arn)
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


def controller_policy(
    *, bucket_arn: str, group_arn: str, cluster: str, region: str, account: str, partition: str
) -> dict[str, Any]:
    """The controller's role: describe, scale this group, Run Command on this cluster, the bucket."""
    _check_bucket_arn(bucket_arn)
    _check_group_arn(group_arn)
    tag = {"StringEquals": {f"aws:ResourceTag/{TAG_CLUSTER}": cluster}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Describe",
                "Effect": "Allow",
                # Read-only calls without resource-level permissions in IAM.
                "Action": [
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeScalingActivities",
                    "ec2:DescribeInstances",
                    "ec2:DescribeSpotPriceHistory",
                    "ssm:DescribeInstanceInformation",
                ],
                "Resource": "*",
            },
            {
                "Sid": "ScaleThisGroup",
                "Effect": "Allow",
                "Action": [
                    "autoscaling:SetDesiredCapacity",
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                ],
                "Resource": [group_arn],
                "Condition": tag,
            },
            {
                "Sid": "RunCommandOnThisCluster",
                "Effect": "Allow",
                "Action": ["ssm:SendCommand"],
                "Resource": [f"arn:{partition}:ec2:{region}:{account}:instance/*"],
                "Condition": {
                    "StringEquals": {f"ssm:resourceTag/{GROUP_TAG}": _group_name(group_arn)}
                },
            },
            {
                "Sid": "RunCommandDocument",
                "Effect": "Allow",
                "Action": ["ssm:SendCommand"],
                # The project's own document (infra/run_document.py), never AWS-RunShellScript.
                "Resource": [
                    f"arn:{partition}:ssm:{region}:{account}:document/{run_document_name(cluster)}"
                ],
            },
            {
                "Sid": "ReadAndCancelCommandsInThisRegion",
                "Effect": "Allow",
                "Action": list(COMMAND_READ_CANCEL_ACTIONS),
                # "*" because IAM offers nothing narrower: the Service Authorization Reference
                # (Actions, resources, and condition keys for AWS Systems Manager) lists no
                # resource type and no condition key for ssm:GetCommandInvocation or
                # ssm:CancelCommand (nor for ssm:ListCommands / ssm:ListCommandInvocations, which
                # the controller does not call and does not get). So "its own commands" cannot be
                # expressed; the global aws:RequestedRegion key at least keeps it to this region.
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Sid": "RunBucket",
                "Effect": "Allow",
                "Action": list(BUCKET_ACTIONS),
                "Resource": [bucket_arn],
            },
            {
                "Sid": "RunObjects",
                "Effect": "Allow",
                "Action": [*READ_OBJECT_ACTIONS, *WRITE_OBJECT_ACTIONS],
                "Resource": [f"{bucket_arn}/{RUNS_PREFIX}*", f"{bucket_arn}/{CONTROL_PREFIX}*"],
            },
            {
                "Sid": "ReadBootstrap",
                "Effect": "Allow",
                "Action": list(READ_OBJECT_ACTIONS),
                "Resource": [f"{bucket_arn}/{BOOTSTRAP_PREFIX}*"],
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
    # A wildcard or a missing ARN here would silently widen a role to every bucket.
    if not bucket_arn.startswith("arn:") or ":s3:::" not in bucket_arn or "*" in bucket_arn:
        raise ValueError(f"not a single bucket ARN: {bucket_arn!r}")


def _check_group_arn(group_arn: str) -> None:
    if (
        not group_arn.startswith("arn:")
        or ":autoscaling:" not in group_arn
        or "autoScalingGroupName/" not in group_arn
        or group_arn.endswith("/*")
    ):
        raise ValueError(f"not a single Auto Scaling group ARN: {group_arn!r}")


def _group_name(group_arn: str) -> str:
    return group_arn.rsplit("autoScalingGroupName/", 1)[1]
