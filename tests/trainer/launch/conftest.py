"""Fixtures for the launch tests (fakes live in fakes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .fakes import outputs_dict


@pytest.fixture
def outputs_file(tmp_path):
    def write(data: Any = None, name: str = "outputs.json") -> str:
        p = tmp_path / name
        p.write_text(json.dumps(outputs_dict() if data is None else data))
        return str(p)

    return write


@pytest.fixture(scope="package")
def aws():
    """One in-process moto for this package (backend start-up costs seconds); tests use fresh names."""
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def cluster(aws, tmp_path):
    """A moto cluster as `pulumi up` leaves it: bucket, launch template, the nodes' Auto Scaling
    group (which launches the nodes itself, tags propagated); returns a builder."""
    import uuid

    import boto3

    from artifacts.node import TAG_CLUSTER, group_name, node_tags

    def build(n: int = 2, *, bucket: bool = True, itype: str = "p4d.24xlarge") -> dict[str, Any]:
        name = f"ts-{uuid.uuid4().hex[:8]}"
        ec2 = boto3.client("ec2", "us-east-1")
        autoscaling = boto3.client("autoscaling", "us-east-1")
        bucket_name = f"{name}-bucket"
        if bucket:
            boto3.client("s3", "us-east-1").create_bucket(Bucket=bucket_name)
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(
            VpcId=vpc, CidrBlock="10.42.16.0/20", AvailabilityZone="us-east-1a"
        )["Subnet"]["SubnetId"]
        lt = ec2.create_launch_template(
            LaunchTemplateName=f"{name}-lt",
            LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": itype},
        )["LaunchTemplate"]["LaunchTemplateId"]
        group = group_name(name)
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group,
            MinSize=0,
            MaxSize=n,
            DesiredCapacity=n,
            VPCZoneIdentifier=subnet,
            LaunchTemplate={"LaunchTemplateId": lt, "Version": "$Latest"},
            Tags=[
                {"Key": k, "Value": v, "PropagateAtLaunch": True}
                for k, v in node_tags(name).items()
            ],
        )
        data = outputs_dict(
            n,
            cluster_name=name,
            bucket=bucket_name,
            run_prefix=f"s3://{bucket_name}/runs",
            autoscaling_group_name=group,
            launch_template_id=lt,
            instance_type=itype,
            instance_types=[itype],
        )
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        return {
            "name": name,
            "outputs": data,
            "file": str(path),
            "ec2": ec2,
            "autoscaling": autoscaling,
            "group": group,
            "lt": lt,
            "tag": TAG_CLUSTER,
        }

    return build


def live_instances(ec2: Any, group: str) -> list[str]:
    """Instances of the group that still run (what would bill)."""
    from artifacts.node import GROUP_TAG

    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{GROUP_TAG}", "Values": [group]}]
    )
    return [
        i["InstanceId"]
        for p in pages
        for r in p["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]
