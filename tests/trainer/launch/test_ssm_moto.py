"""The SSM Run Command adapter against moto (moto runs nothing and reports success)."""

from __future__ import annotations

import subprocess

import boto3
import pytest
from botocore.exceptions import ClientError

from trainer.launch.group import Group
from trainer.launch.ports import Invocation
from trainer.launch.ssm import (
    SsmRunner,
    cluster_targets,
    encode_script,
    send_command_args,
    ssm_online,
)


def ssm():
    return boto3.client("ssm", "us-east-1")


def _members(c):
    return Group(c["autoscaling"], c["ec2"], None, name=c["group"]).members()


def test_launch_command_targets_one_instance_and_logs_to_the_run(cluster):
    c = cluster(2)
    iid = _members(c)[1].instance_id
    run = f"s3://{c['outputs']['bucket']}/runs/r1"
    runner = SsmRunner(ssm(), cluster=c["name"], run_uri=run)

    cid = runner.send(iid, "#!/bin/bash\necho hello\n", comment="twostage launch 1")

    cmd = ssm().list_commands(CommandId=cid)["Commands"][0]
    assert iid in cmd["InstanceIds"]  # (moto lists every instance of the region here: its bug)
    args = send_command_args(
        instance_ids=[iid], script="true\n", run_uri=run, comment="c", document="d"
    )
    assert args["InstanceIds"] == [iid] and "Targets" not in args
    # The project's document (the only one the controller's role may send), never a shell one.
    assert cmd["DocumentName"] == f"{c['name']}-run-script"
    assert cmd["OutputS3BucketName"] == c["outputs"]["bucket"]
    assert cmd["OutputS3KeyPrefix"] == "runs/r1/logs"
    assert cmd["Parameters"]["script"] == [encode_script("#!/bin/bash\necho hello\n")]
    assert cmd["Parameters"]["executionTimeout"] == ["172800"]
    # moto reports the happy path: the invocation succeeded with exit 0.
    assert runner.poll(cid, iid) == Invocation("Success", 0)


def test_stop_everything_targets_the_clusters_nodes_not_the_controller():
    targets = {t["Key"]: t["Values"] for t in cluster_targets("c1")}
    assert targets == {"tag:twostage:cluster": ["c1"], "tag:twostage:role": ["node"]}


def test_unknown_invocation_is_pending_not_an_error(cluster):
    c = cluster(1)
    runner = SsmRunner(ssm(), cluster=c["name"], run_uri="s3://bkt/runs/r")
    cid = runner.send(_members(c)[0].instance_id, "true\n", comment="x")
    assert runner.poll(cid, "i-0000000000000dead") == Invocation("Pending")


def test_ssm_registration_check_falls_back_when_unavailable(cluster):
    c = cluster(1)
    assert ssm_online(ssm(), [m.instance_id for m in _members(c)]) is None  # moto: unimplemented

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
def test_the_document_runs_the_script_with_bash_and_keeps_its_exit_code(code):
    """The project document's own lines (``sh``, as SSM's aws:runShellScript), its ``script``
    parameter interpolated as SSM does: the script runs under bash and its exit code comes back."""
    import re

    from infra.run_document import BASE64_PATTERN, run_document

    doc = run_document()
    script = f"#!/bin/bash\nset -uo pipefail\necho \"literal $HOME 'q'\" >/dev/null\nexit {code}\n"
    value = encode_script(script)
    assert re.match(doc["parameters"]["script"]["allowedPattern"], value)
    assert not re.match(BASE64_PATTERN, "x'; reboot; '")  # nothing a shell would parse
    lines = doc["mainSteps"][0]["inputs"]["runCommand"]
    program = "\n".join(lines).replace("{{ script }}", value)
    proc = subprocess.run(["sh", "-c", program], capture_output=True, timeout=30)
    assert proc.returncode == code, proc.stderr


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


def test_no_code_launches_or_terminates_instances_out_of_band():
    """Every node belongs to the Pulumi-managed group: no RunInstances/TerminateInstances call."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    offenders = [
        str(p.relative_to(root))
        for pkg in ("trainer", "infra", "artifacts", "demo")
        for p in (root / pkg).rglob("*.py")
        if any(call in p.read_text() for call in ("run_instances", "terminate_instances"))
    ]
    assert offenders == []
