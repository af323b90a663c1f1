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
    """A moto cluster: bucket, launch template, n tagged nodes; returns a builder."""
    import uuid

    import boto3

    def build(n: int = 2, *, bucket: bool = True) -> dict[str, Any]:
        name = f"ts-{uuid.uuid4().hex[:8]}"
        ec2 = boto3.client("ec2", "us-east-1")
        bucket_name = f"{name}-bucket"
        if bucket:
            boto3.client("s3", "us-east-1").create_bucket(Bucket=bucket_name)
        lt = ec2.create_launch_template(
            LaunchTemplateName=f"{name}-lt",
            LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": "p4d.24xlarge"},
        )["LaunchTemplate"]["LaunchTemplateId"]
        ids, ips = [], []
        for i in range(n):
            inst = ec2.run_instances(
                LaunchTemplate={"LaunchTemplateId": lt, "Version": "$Latest"},
                MinCount=1,
                MaxCount=1,
                UserData=f"#!/bin/bash\n# twostage node bootstrap ({name} node {i})\nTWOSTAGE_NODE_INDEX={i}\n",
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [
                            {"Key": "Name", "Value": f"{name}-node-{i}"},
                            {"Key": "twostage:cluster", "Value": name},
                            {"Key": "twostage:node-index", "Value": str(i)},
                        ],
                    }
                ],
            )["Instances"][0]
            ids.append(inst["InstanceId"])
            ips.append(inst["PrivateIpAddress"])
        data = outputs_dict(
            n,
            cluster_name=name,
            bucket=bucket_name,
            run_prefix=f"s3://{bucket_name}/runs",
            instance_ids=ids,
            private_ips=ips,
            head_instance_id=ids[0],
            head_private_ip=ips[0],
            launch_template_id=lt,
        )
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        return {"name": name, "outputs": data, "file": str(path), "ec2": ec2, "lt": lt}

    return build
