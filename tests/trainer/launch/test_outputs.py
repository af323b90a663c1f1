"""Stack outputs: from a file or the Pulumi CLI, validated with one-line errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from trainer.launch import LaunchError
from trainer.launch.outputs import load_outputs, pulumi_outputs

from .fakes import outputs_dict


def test_outputs_file_is_read_and_typed(outputs_file):
    o = load_outputs(outputs_file=outputs_file(outputs_dict(n=3)))
    assert o.node_count == 3 and o.group_name == "ts-test-nodes"
    assert o.instance_types == ("p4d.24xlarge",)
    assert o.run_prefix == "s3://ts-bucket/runs" and o.spot is True
    assert o.controller_instance_type == "t3.small"
    legacy = {k: v for k, v in outputs_dict().items() if k != "instance_types"}
    assert load_outputs(outputs_file=outputs_file(legacy)).instance_types == ("p4d.24xlarge",)
    assert o.allow_internet_egress is False  # a stack from before the output: no egress
    for value in (True, "true"):
        egress = outputs_dict(allow_internet_egress=value)
        assert load_outputs(outputs_file=outputs_file(egress)).allow_internet_egress is True


@pytest.mark.parametrize(
    "data, message",
    [
        ({**outputs_dict(), "bucket": None}, "lack bucket"),
        ({k: v for k, v in outputs_dict().items() if k != "cluster_name"}, "lack cluster_name"),
        (outputs_dict(autoscaling_group_name=""), "lack autoscaling_group_name"),
        (outputs_dict(instance_types="p4d.24xlarge"), "instance_types .* is not a list"),
        (outputs_dict(node_count=0), "must be >= 1"),
        (outputs_dict(run_prefix="/tmp/runs"), "must be an s3:// URI"),
        (outputs_dict(node_count="two"), "node_count .* is not an integer"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_outputs_are_rejected_naming_the_problem(outputs_file, data, message):
    with pytest.raises(LaunchError, match=message):
        load_outputs(outputs_file=outputs_file(data))


def test_unreadable_outputs_files(tmp_path):
    with pytest.raises(LaunchError, match="does not exist"):
        load_outputs(outputs_file=tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LaunchError, match="is not JSON .*pulumi stack output --json"):
        load_outputs(outputs_file=bad)


def fake_run(returncode=0, stdout="", stderr="", missing=False):
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        if missing:
            raise FileNotFoundError("pulumi")
        return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)

    return run, calls


def test_pulumi_cli_outputs_for_a_named_stack():
    run, calls = fake_run(stdout=json.dumps(outputs_dict()))
    o = pulumi_outputs("dev", run=run)
    assert calls == [["pulumi", "stack", "output", "--json", "--stack", "dev"]]
    assert o.cluster_name == "ts-test"


def test_missing_pulumi_cli_says_install_or_pass_outputs():
    run, _ = fake_run(missing=True)
    with pytest.raises(LaunchError, match="install Pulumi .* or pass --outputs FILE"):
        pulumi_outputs(None, run=run)


def test_pulumi_errors_and_empty_stacks_are_one_line():
    run, _ = fake_run(returncode=255, stderr="warning: x\nerror: no stack named 'prod' found\n")
    with pytest.raises(LaunchError, match="no stack named 'prod' found") as err:
        pulumi_outputs("prod", run=run)
    assert "\n" not in str(err.value)
    run, _ = fake_run(stdout="{}")
    with pytest.raises(LaunchError, match="has no outputs: run `pulumi up` first"):
        pulumi_outputs(None, run=run)
