"""The group adapter against moto's Auto Scaling, and the pure rank assignment."""

from __future__ import annotations

import uuid

import boto3
import pytest

from trainer.launch.group import Group, launch_nodes
from trainer.launch.ports import Member
from trainer.launch.ranks import assign_ranks


def m(
    iid, t, *, ip=None, state="running", lifecycle="InService", online=None, itype="p4d.24xlarge"
):
    return Member(
        iid,
        ip if ip is not None else f"10.0.{ord(iid[-1])}.{t}",
        itype,
        state,
        lifecycle,
        float(t),
        ssm_online=online,
    )


def test_ranks_are_the_usable_members_oldest_first_capped_at_wanted():
    members = [
        m("i-c", 3),
        m("i-a", 1),
        m("i-b", 1),  # same launch time: instance id breaks the tie
        m("i-d", 0, state="terminated", lifecycle=""),
        m("i-e", 0, lifecycle="Pending"),
        m("i-f", 0, online=False),  # SSM agent offline: a command would not be delivered
        m("i-g", 0, ip=""),
    ]
    nodes = launch_nodes(members, wanted=2)
    assert [(n.index, n.instance_id) for n in nodes] == [(0, "i-a"), (1, "i-b")]
    assert [n.instance_id for n in launch_nodes(members, wanted=5)] == ["i-a", "i-b", "i-c"]
    ranks = assign_ranks(launch_nodes(members, wanted=3))
    assert ranks[0].is_head and ranks[0].instance_id == "i-a"


def test_rank_order_is_stable_and_keeps_the_head_across_a_replacement():
    before = [m("i-a", 1), m("i-b", 2), m("i-c", 3)]
    assert launch_nodes(before, 3) == launch_nodes(list(reversed(before)), 3)
    after = [m("i-a", 1), m("i-b", 2, state="terminated", lifecycle=""), m("i-c", 3), m("i-n", 9)]
    nodes = launch_nodes(after, 3)
    assert [n.instance_id for n in nodes] == ["i-a", "i-c", "i-n"]
    assert nodes[0].instance_id == "i-a"  # the head did not move


@pytest.fixture
def group(aws):
    ec2 = boto3.client("ec2", "us-east-1")
    autoscaling = boto3.client("autoscaling", "us-east-1")
    name = f"ts-{uuid.uuid4().hex[:8]}-nodes"
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24", AvailabilityZone="us-east-1a")
    lt = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": "p4d.24xlarge"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=3,
        DesiredCapacity=3,
        VPCZoneIdentifier=subnet["Subnet"]["SubnetId"],
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": lt, "Version": "$Latest"},
                "Overrides": [{"InstanceType": "p4d.24xlarge"}, {"InstanceType": "p5.48xlarge"}],
            },
            "InstancesDistribution": {
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
        Tags=[{"Key": "twostage:cluster", "Value": name, "PropagateAtLaunch": True}],
    )
    return Group(autoscaling, ec2, None, name=name), ec2


def test_group_members_replacement_and_scale_to_zero(group):
    g, ec2 = group
    members = g.members()
    assert len(members) == 3 and all(x.usable for x in members)
    assert {x.instance_type for x in members} == {"p4d.24xlarge"}
    assert g.desired() == 3 and g.max_size() == 3
    lost = launch_nodes(members, 3)[1].instance_id
    ec2.terminate_instances(InstanceIds=[lost])
    after = g.members()
    usable = [x.instance_id for x in after if x.usable]
    assert lost not in usable and len(usable) == 3  # AWS replaced it; nobody called RunInstances
    assert any(x.instance_id == lost and x.state == "terminated" for x in after)  # kept for cost
    g.set_desired(0)
    assert g.desired() == 0
    assert [x for x in g.members() if x.state in ("pending", "running")] == []


def test_a_missing_group_is_a_one_line_error(aws):
    from trainer.launch import LaunchError

    g = Group(
        boto3.client("autoscaling", "us-east-1"),
        boto3.client("ec2", "us-east-1"),
        None,
        name="nope",
    )
    with pytest.raises(LaunchError, match="nope does not exist"):
        g.desired()
