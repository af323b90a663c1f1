"""`pulumi destroy` over the mock graph leaves no instance: every instance comes from the graph.

The plan's resources are applied to moto (what the provider would create), a spot reclaim is
simulated (the group replaces the node), then the graph is destroyed in reverse order as the
engine does. Nothing the program or the launcher starts may survive that: no instance outside
the Pulumi state, no node left billing.
"""

from __future__ import annotations

import base64

import boto3
import pytest
from infra_mocks import StackRun, run_stack

ASG = "aws:autoscaling/group:Group"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
#: Resource types that can start an EC2 instance. Only the group and the controller may appear.
INSTANCE_MAKERS = {
    ASG,
    INSTANCE,
    "aws:ec2/spotFleetRequest:SpotFleetRequest",
    "aws:ec2/fleet:Fleet",
    "aws:ec2/spotInstanceRequest:SpotInstanceRequest",
    "aws:autoscaling/attachment:Attachment",
}


@pytest.fixture
def aws():
    from moto import mock_aws

    with mock_aws():
        yield


def _apply(run: StackRun) -> dict[str, str]:
    """Create the plan's compute in moto the way the provider would; returns name → AWS id."""
    ec2 = boto3.client("ec2", "us-east-1")
    autoscaling = boto3.client("autoscaling", "us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.16.0/20", AvailabilityZone="us-east-1a")
    subnet_id = subnet["Subnet"]["SubnetId"]
    ids: dict[str, str] = {}
    lt = run.one(LT)
    ids[lt.name] = ec2.create_launch_template(
        LaunchTemplateName=lt.name,
        LaunchTemplateData={
            "ImageId": lt.inputs["imageId"],
            "InstanceType": lt.inputs["instanceType"],
            "UserData": lt.inputs["userData"],
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    group = run.one(ASG)
    g = group.inputs
    policy = g["mixedInstancesPolicy"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=g["name"],
        MinSize=int(g["minSize"]),
        MaxSize=int(g["maxSize"]),
        DesiredCapacity=int(g["desiredCapacity"]),
        VPCZoneIdentifier=subnet_id,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": ids[lt.name],
                    "Version": "$Latest",
                },
                "Overrides": [
                    {"InstanceType": o["instanceType"]}
                    for o in policy["launchTemplate"]["overrides"]
                ],
            },
            "InstancesDistribution": {
                "SpotAllocationStrategy": policy["instancesDistribution"]["spotAllocationStrategy"],
                "OnDemandPercentageAboveBaseCapacity": int(
                    policy["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"]
                ),
            },
        },
        Tags=[
            {"Key": t["key"], "Value": t["value"], "PropagateAtLaunch": t["propagateAtLaunch"]}
            for t in g["tags"]
        ],
    )
    ids[group.name] = g["name"]
    controller = run.one(INSTANCE)
    c = controller.inputs
    ids[controller.name] = ec2.run_instances(
        ImageId=c["ami"],
        InstanceType=c["instanceType"],
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet_id,
        UserData=base64.b64encode(c["userData"].encode()).decode(),
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": k, "Value": v} for k, v in c["tags"].items()],
            }
        ],
    )["Instances"][0]["InstanceId"]
    return ids


def _destroy(run: StackRun, ids: dict[str, str]) -> None:
    """Reverse registration order, each type as its provider deletes it."""
    ec2 = boto3.client("ec2", "us-east-1")
    autoscaling = boto3.client("autoscaling", "us-east-1")
    for r in reversed(run.resources):
        if r.typ == ASG:
            # The provider drains the group (min = max = desired = 0), waits, then deletes it.
            autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=ids[r.name], MinSize=0, MaxSize=0, DesiredCapacity=0
            )
            autoscaling.delete_auto_scaling_group(AutoScalingGroupName=ids[r.name])
        elif r.typ == INSTANCE:
            ec2.terminate_instances(InstanceIds=[ids[r.name]])
        elif r.typ == LT:
            ec2.delete_launch_template(LaunchTemplateId=ids[r.name])


def _running() -> list[str]:
    ec2 = boto3.client("ec2", "us-east-1")
    return [
        i["InstanceId"]
        for page in ec2.get_paginator("describe_instances").paginate()
        for r in page["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running", "stopping", "stopped")
    ]


def test_only_the_group_and_the_controller_can_start_instances():
    run = run_stack({"nodeCount": 3, "instanceTypes": "p4d.24xlarge,p5.48xlarge"})
    makers = [r.typ for r in run.resources if r.typ in INSTANCE_MAKERS]
    assert sorted(makers) == sorted([ASG, INSTANCE])
    assert run.one(INSTANCE).inputs["tags"]["twostage:role"] == "controller"


def test_destroy_over_the_mock_graph_leaves_no_instance(aws):
    run = run_stack({"nodeCount": 3})
    ids = _apply(run)
    autoscaling = boto3.client("autoscaling", "us-east-1")
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ids[run.one(ASG).name]])
    members = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
    assert len(members) == 3 and len(_running()) == 4  # 3 nodes + the controller
    # A spot reclaim mid-run: AWS replaces the node inside the group, still in the state.
    boto3.client("ec2", "us-east-1").terminate_instances(InstanceIds=[members[0]])
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ids[run.one(ASG).name]])
    assert len(group["AutoScalingGroups"][0]["Instances"]) == 3

    _destroy(run, ids)

    assert _running() == []
    assert autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
