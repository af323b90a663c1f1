"""IAM and bucket policy documents of both roles (pure functions, no engine).

``allowed`` is a small IAM evaluator (explicit deny wins, wildcards in actions and resources,
``StringEquals`` conditions) so the tests ask what a role can *do*, not how the JSON looks.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

import pytest

from infra.controller_policy import controller_policy
from infra.policies import (
    assume_role_policy,
    bucket_access_policy,
    node_self_terminate_policy,
    ssm_agent_policy,
    tls_only_bucket_policy,
    to_json,
)

ARN = "arn:aws:s3:::twostage-abc123"
GROUP = (
    "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:"
    "0f0e0d0c-0b0a-0908-0706-050403020100:autoScalingGroupName/twostage-dev-nodes"
)
OTHER_GROUP = GROUP.replace("twostage-dev-nodes", "someone-elses")


def _statements(doc):
    return json.loads(to_json(doc))["Statement"]


def _list(value):
    return value if isinstance(value, list) else [value]


def _matches(stmt, action, resource, context):
    if not any(fnmatchcase(action, a) for a in _list(stmt["Action"])):
        return False
    if not any(fnmatchcase(resource, r) for r in _list(stmt["Resource"])):
        return False
    for op, conds in stmt.get("Condition", {}).items():
        assert op == "StringEquals", op
        if any(context.get(k) != v for k, v in conds.items()):
            return False
    return True


def allowed(docs, action, resource, context=None):
    stmts = [s for d in docs for s in _statements(d)]
    hits = [s["Effect"] for s in stmts if _matches(s, action, resource, context or {})]
    return "Allow" in hits and "Deny" not in hits


NODE = [ssm_agent_policy(), bucket_access_policy(ARN), node_self_terminate_policy(GROUP)]
CONTROLLER = [
    ssm_agent_policy(),
    controller_policy(
        bucket_arn=ARN,
        group_arn=GROUP,
        cluster="twostage-dev",
        region="us-east-1",
        account="123456789012",
        partition="aws",
    ),
]
INSTANCE = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
HERE = {"aws:RequestedRegion": "us-east-1"}
MINE = {
    "ssm:resourceTag/aws:autoscaling:groupName": "twostage-dev-nodes",
    "aws:ResourceTag/twostage:cluster": "twostage-dev",
    **HERE,
}


def test_nodes_write_runs_and_cannot_touch_the_bootstrap_bundle_or_control():
    assert allowed(NODE, "s3:PutObject", f"{ARN}/runs/exp1/checkpoints/step-10/x.bin")
    assert allowed(NODE, "s3:DeleteObject", f"{ARN}/runs/exp1/checkpoints/step-10/x.bin")
    assert allowed(NODE, "s3:GetObject", f"{ARN}/bootstrap/twostage-src.zip")
    assert allowed(NODE, "s3:GetObject", f"{ARN}/control/heartbeat.json")
    assert allowed(NODE, "s3:ListBucket", ARN)
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not allowed(NODE, action, f"{ARN}/bootstrap/twostage-src.zip")
        assert not allowed(NODE, action, f"{ARN}/control/heartbeat.json")
    assert not allowed(NODE, "s3:GetObject", "arn:aws:s3:::another-bucket/x")
    assert not allowed(NODE, "s3:PutBucketPolicy", ARN)


def test_nodes_cannot_read_parameter_store():
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"):
        assert not allowed(NODE, action, "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db")
    assert allowed(NODE, "ssm:UpdateInstanceInformation", "*")
    assert allowed(NODE, "ec2messages:GetMessages", "*")
    assert allowed(NODE, "ssmmessages:OpenDataChannel", "*")


def test_a_node_may_leave_only_its_own_group():
    action = "autoscaling:TerminateInstanceInAutoScalingGroup"
    assert allowed(NODE, action, GROUP)
    assert not allowed(NODE, action, OTHER_GROUP)
    assert not allowed(NODE, "autoscaling:SetDesiredCapacity", GROUP)
    assert not allowed(NODE, "ssm:SendCommand", INSTANCE, MINE)


def test_controller_scales_only_this_group_and_commands_only_this_cluster():
    assert allowed(CONTROLLER, "autoscaling:SetDesiredCapacity", GROUP, MINE)
    assert not allowed(CONTROLLER, "autoscaling:SetDesiredCapacity", OTHER_GROUP, MINE)
    assert not allowed(
        CONTROLLER,
        "autoscaling:SetDesiredCapacity",
        GROUP,
        {"aws:ResourceTag/twostage:cluster": "x"},
    )
    assert allowed(CONTROLLER, "ssm:SendCommand", INSTANCE, MINE)
    assert not allowed(
        CONTROLLER,
        "ssm:SendCommand",
        INSTANCE,
        {"ssm:resourceTag/aws:autoscaling:groupName": "someone-elses"},
    )
    # A user who may tag instances can set twostage:cluster, never an aws: tag: not enough.
    assert not allowed(
        CONTROLLER,
        "ssm:SendCommand",
        INSTANCE,
        {"ssm:resourceTag/twostage:cluster": "twostage-dev"},
    )
    assert allowed(
        CONTROLLER,
        "ssm:SendCommand",
        "arn:aws:ssm:us-east-1:123456789012:document/twostage-dev-run-script",
    )
    for other in ("AWS-RunShellScript", "AWS-RunPowerShellScript"):
        assert not allowed(
            CONTROLLER, "ssm:SendCommand", f"arn:aws:ssm:us-east-1::document/{other}"
        )
    assert allowed(CONTROLLER, "s3:PutObject", f"{ARN}/control/heartbeat.json")
    assert allowed(CONTROLLER, "s3:PutObject", f"{ARN}/runs/exp1/STATUS.json")
    assert not allowed(CONTROLLER, "s3:PutObject", f"{ARN}/bootstrap/twostage-src.zip")
    assert not allowed(CONTROLLER, "ec2:RunInstances", "*")
    assert not allowed(CONTROLLER, "ec2:TerminateInstances", INSTANCE)
    assert not allowed(CONTROLLER, "iam:PassRole", "*")
    assert not allowed(CONTROLLER, "ssm:GetParameter", "*")


def test_controller_reads_and_cancels_commands_in_its_region_only_and_lists_none():
    # IAM has no resource type or condition key for these (Service Authorization Reference):
    # the region is the only narrowing it offers.
    for action in ("ssm:GetCommandInvocation", "ssm:CancelCommand"):
        assert allowed(CONTROLLER, action, "*", HERE)
        assert not allowed(CONTROLLER, action, "*", {"aws:RequestedRegion": "eu-west-1"})
        assert not allowed(NODE, action, "*", HERE)
    # The controller never lists commands (the code table below checks it calls no list_*).
    for action in ("ssm:ListCommands", "ssm:ListCommandInvocations"):
        assert not allowed(CONTROLLER, action, "*", HERE)


def test_no_statement_allows_a_wildcard_action():
    for doc in [*NODE, *CONTROLLER]:
        for stmt in _statements(doc):
            if stmt["Effect"] == "Allow":
                assert all("*" not in a for a in _list(stmt["Action"])), stmt


@pytest.mark.parametrize("bad", ["*", "arn:aws:s3:::*", "twostage-abc", "", "arn:aws:s3:::b*"])
def test_wildcard_or_non_arn_bucket_is_refused(bad):
    with pytest.raises(ValueError):
        bucket_access_policy(bad)
    with pytest.raises(ValueError):
        tls_only_bucket_policy(bad)


@pytest.mark.parametrize(
    "bad", ["*", "arn:aws:autoscaling:us-east-1:1:autoScalingGroup:*", GROUP[:-5] + "/*"]
)
def test_wildcard_group_is_refused(bad):
    with pytest.raises(ValueError):
        node_self_terminate_policy(bad)


def test_tls_only_policy_denies_insecure_transport_on_bucket_and_objects():
    stmts = _statements(tls_only_bucket_policy(ARN))
    insecure = [
        s for s in stmts if s.get("Condition", {}).get("Bool") == {"aws:SecureTransport": "false"}
    ]
    assert len(insecure) == 1
    assert insecure[0]["Effect"] == "Deny" and insecure[0]["Principal"] == "*"
    assert set(insecure[0]["Resource"]) == {ARN, f"{ARN}/*"}
    assert all(s["Effect"] == "Deny" for s in stmts)


def test_only_ec2_may_assume_the_roles():
    (stmt,) = _statements(assume_role_policy())
    assert stmt["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert stmt["Action"] == "sts:AssumeRole"


def test_policy_json_is_stable():
    assert to_json(bucket_access_policy(ARN)) == to_json(bucket_access_policy(ARN))
    assert to_json({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


# -- the roles grant what the code calls ---------------------------------------------------------
BUCKET_OBJ = f"{ARN}/runs/exp1/checkpoints/step-10/x.bin"
#: boto3 method (as written in trainer/launch/) → (IAM action, resource, context) for the controller.
CONTROLLER_CALLS = {
    "describe_auto_scaling_groups": ("autoscaling:DescribeAutoScalingGroups", "*", {}),
    "set_desired_capacity": ("autoscaling:SetDesiredCapacity", GROUP, MINE),
    '"describe_instances"': ("ec2:DescribeInstances", "*", {}),
    '"describe_instance_information"': ("ssm:DescribeInstanceInformation", "*", {}),
    "describe_spot_price_history": ("ec2:DescribeSpotPriceHistory", "*", {}),
    "send_command": ("ssm:SendCommand", INSTANCE, MINE),
    "get_command_invocation": ("ssm:GetCommandInvocation", "*", HERE),
    "cancel_command": ("ssm:CancelCommand", "*", HERE),
}
NODE_CALLS = {
    "terminate_instance_in_auto_scaling_group": (
        "autoscaling:TerminateInstanceInAutoScalingGroup",
        GROUP,
        {},
    ),
}


def _launch_source() -> str:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "trainer" / "launch"
    return "\n".join(p.read_text() for p in root.glob("*.py"))


def test_every_aws_call_of_the_controller_and_the_node_agent_is_granted():
    source = _launch_source()
    for calls, role in ((CONTROLLER_CALLS, CONTROLLER), (NODE_CALLS, NODE)):
        for method, (action, resource, context) in calls.items():
            assert method in source, f"{method} is no longer called: update this table"
            assert allowed(role, action, resource, context), (method, action)
    # The S3 side of both: the run's objects, the control objects, the bundle.
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert allowed(CONTROLLER, action, BUCKET_OBJ) and allowed(NODE, action, BUCKET_OBJ)
    assert allowed(CONTROLLER, "s3:PutObject", f"{ARN}/control/controller.json")
    assert allowed(NODE, "s3:GetObject", f"{ARN}/control/heartbeat.json")


def test_the_launch_code_calls_nothing_the_table_does_not_know():
    import re

    known = {m.strip('"') for m in (*CONTROLLER_CALLS, *NODE_CALLS)}
    source = _launch_source()
    called = set(
        re.findall(
            r"\.(describe_[a-z_]+|set_[a-z_]+_capacity|terminate_[a-z_]+|"
            r"send_command|cancel_command|get_command_invocation|list_command[a-z_]*)\(",
            source,
        )
    )
    called |= set(re.findall(r'get_paginator\("([a-z_]+)"\)', source))
    assert called <= known, called - known
