"""The controller's IAM policy: what the one machine that drives a run may do, and no more.

Pure (tested without the Pulumi engine; the controller component calls it inside
``Output.apply`` once ARNs are known). It builds on the vocabulary the nodes' documents share
(:mod:`infra.policies`: the bucket actions, the ARN checks) and is kept apart from them because
it is the other principal of the security model (see docs/provision.md "IAM").

The controller may describe, scale *this* group (ARN + cluster tag), send Run Command documents
to the instances *this group* launched (the ``aws:autoscaling:groupName`` tag, which only Auto
Scaling can set: a user who may tag instances cannot put one in reach), only with the project's
own document, read and cancel Run Command invocations in this region (IAM has no resource type or
condition key that narrows these to its own commands), and read/write the bucket. It cannot list
commands.
"""

from __future__ import annotations

from typing import Any

from artifacts.node import (
    BOOTSTRAP_PREFIX,
    CONTROL_PREFIX,
    GROUP_TAG,
    RUNS_PREFIX,
    TAG_CLUSTER,
    run_document_name,
)
from infra.policies import (
    BUCKET_ACTIONS,
    READ_OBJECT_ACTIONS,
    WRITE_OBJECT_ACTIONS,
    check_bucket_arn,
    check_group_arn,
)

#: Run Command reads and cancels the controller makes (``trainer/launch/ssm.py``). IAM has no
#: resource type or service condition key for either (see ``controller_policy``).
COMMAND_READ_CANCEL_ACTIONS = ("ssm:GetCommandInvocation", "ssm:CancelCommand")


def controller_policy(
    *, bucket_arn: str, group_arn: str, cluster: str, region: str, account: str, partition: str
) -> dict[str, Any]:
    """The controller's role: describe, scale this group, Run Command on this cluster, the bucket."""
    check_bucket_arn(bucket_arn)
    check_group_arn(group_arn)
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


def _group_name(group_arn: str) -> str:
    return group_arn.rsplit("autoScalingGroupName/", 1)[1]
