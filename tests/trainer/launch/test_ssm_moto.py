"""SSM Run Command and EC2 adapters against moto (moto runs nothing and reports success)."""

from __future__ import annotations

import base64
import subprocess

import boto3
import pytest
from botocore.exceptions import ClientError

from trainer.launch.fleet import Ec2Fleet, retarget_user_data
from trainer.launch.ssm import SsmRunner, node_targets, shell_commands, ssm_online
from trainer.launch.watch import Invocation


def ssm():
    return boto3.client("ssm", "us-east-1")


def test_launch_command_targets_one_node_by_tag_and_logs_to_the_run(cluster):
    c = cluster(2)
    run = f"s3://{c['outputs']['bucket']}/runs/r1"
    runner = SsmRunner(ssm(), cluster=c["name"], run_uri=run)

    cid = runner.send(1, "#!/bin/bash\necho hello\n", comment="twostage launch 1")

    cmd = ssm().list_commands(CommandId=cid)["Commands"][0]
    assert cmd["Targets"] == node_targets(c["name"], 1)
    assert {t["Key"] for t in cmd["Targets"]} == {"tag:twostage:node-index", "tag:twostage:cluster"}
    # moto resolves the tag targets: exactly node 1 of this cluster, no other instance.
    assert cmd["InstanceIds"] == [c["outputs"]["instance_ids"][1]]
    assert cmd["OutputS3BucketName"] == c["outputs"]["bucket"]
    assert cmd["OutputS3KeyPrefix"] == "runs/r1/logs"
    assert "echo hello" in cmd["Parameters"]["commands"]
    assert cmd["Parameters"]["executionTimeout"] == ["172800"]
    # moto reports the happy path: the node's invocation succeeded with exit 0.
    assert runner.poll(cid, c["outputs"]["instance_ids"][1]) == Invocation("Success", 0)


def test_unknown_invocation_is_pending_not_an_error(cluster):
    c = cluster(1)
    runner = SsmRunner(ssm(), cluster=c["name"], run_uri="s3://bkt/runs/r")
    cid = runner.send(0, "true\n", comment="x")
    assert runner.poll(cid, "i-0000000000000dead") == Invocation("Pending")


def test_ssm_registration_check_falls_back_when_unavailable(cluster):
    c = cluster(1)
    assert ssm_online(ssm(), c["outputs"]["instance_ids"]) is None  # moto: not implemented

    class FakeSsm:
        def get_paginator(self, name):
            assert name == "describe_instance_information"

            class P:
                def paginate(self, **kw):
                    return [
                        {"InstanceInformationList": [{"InstanceId": "i-a", "PingStatus": "Online"}]}
                    ]

            return P()

    assert ssm_online(FakeSsm(), ["i-a", "i-b"]) == {"i-a": True, "i-b": False}


@pytest.mark.parametrize("code", [0, 75])
def test_shell_wrapper_runs_the_script_with_bash_and_keeps_its_exit_code(code):
    script = f"#!/bin/bash\nset -uo pipefail\necho \"literal $HOME 'q'\" >/dev/null\nexit {code}\n"
    proc = subprocess.run(
        ["sh", "-c", "\n".join(shell_commands(script))], capture_output=True, timeout=30
    )
    assert proc.returncode == code, proc.stderr


def test_fleet_lists_only_this_cluster_with_indices(cluster):
    a, b = cluster(2), cluster(1)
    fleet = Ec2Fleet(a["ec2"], None, cluster=a["name"], launch_template_id=a["lt"])
    nodes = sorted(fleet.nodes(), key=lambda n: n.index)
    assert [n.index for n in nodes] == [0, 1]
    assert [n.instance_id for n in nodes] == a["outputs"]["instance_ids"]
    assert all(n.state == "running" and n.private_ip for n in nodes)
    assert b["outputs"]["instance_ids"][0] not in {n.instance_id for n in nodes}


def test_fleet_replaces_a_lost_node_from_the_launch_template(cluster):
    c = cluster(2)
    ec2 = c["ec2"]
    fleet = Ec2Fleet(ec2, None, cluster=c["name"], launch_template_id=c["lt"])
    fleet.nodes()  # remembers the nodes' user data while they live
    ec2.terminate_instances(InstanceIds=[c["outputs"]["instance_ids"][1]])

    new = fleet.replace(1)

    assert new is not None and new.index == 1 and new.state in ("pending", "running")
    inst = ec2.describe_instances(InstanceIds=[new.instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["twostage:cluster"] == c["name"] and tags["twostage:node-index"] == "1"
    assert tags["twostage:replacement"] == "true"
    ud = ec2.describe_instance_attribute(InstanceId=new.instance_id, Attribute="userData")
    assert "TWOSTAGE_NODE_INDEX=1" in base64.b64decode(ud["UserData"]["Value"]).decode()


def test_fleet_reports_no_capacity_as_none():
    class NoCapacity:
        def run_instances(self, **kw):
            raise ClientError(
                {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none"}},
                "RunInstances",
            )

    fleet = Ec2Fleet(NoCapacity(), None, cluster="c", launch_template_id="lt-1")
    fleet._user_data[0] = "TWOSTAGE_NODE_INDEX=0\n"
    assert fleet.replace(0) is None


def test_terminate_all_ends_every_node_of_the_cluster_only(cluster):
    a, b = cluster(2), cluster(1)
    fleet = Ec2Fleet(a["ec2"], None, cluster=a["name"], launch_template_id=a["lt"])
    assert sorted(fleet.terminate_all()) == sorted(a["outputs"]["instance_ids"])
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in a["ec2"].describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert all(states[i] in ("shutting-down", "terminated") for i in a["outputs"]["instance_ids"])
    assert states[b["outputs"]["instance_ids"][0]] == "running"


def test_retarget_user_data_rewrites_the_index():
    text = "#!/bin/bash\n# twostage node bootstrap (c node 0); log\nTWOSTAGE_NODE_INDEX=0\nX=1\n"
    out = retarget_user_data(text, 3)
    assert "TWOSTAGE_NODE_INDEX=3" in out and "(c node 3)" in out and "X=1" in out
    with pytest.raises(ValueError):
        retarget_user_data("#!/bin/bash\n", 1)


def test_ssm_registration_check_tolerates_a_server_error():
    class Failing:
        def get_paginator(self, name):
            class P:
                def paginate(self, **kw):
                    raise ClientError(
                        {"Error": {"Code": "500"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                        "DescribeInstanceInformation",
                    )

            return P()

    assert ssm_online(Failing(), ["i-a"]) is None
