"""Harness: run the real Pulumi program (``infra/__main__.py``) under Pulumi's mock engine.

``preview=False`` and mocks that fill every computed output the program reads (ids, ARNs, bucket
name, private IPs, names): with unknown values an ``apply`` never runs and assertions inside it
would pass vacuously. Each resource registration is recorded so tests assert on real inputs.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pulumi

from infra.wheelhouse import write_requirements

FAKE_AMI = "ami-0123456789abcdef0"
FAKE_BUCKET = "twostage-20261123abcdef"
OFFERED_AZS = ["us-east-1d", "us-east-1a"]
ACCOUNT = "123456789012"
S3_PREFIX_LIST = "pl-63a5400a"
VPC_CIDR_EXISTING = "172.31.0.0/16"


@cache
def tiny_wheelhouse() -> str:
    """A built wheelhouse of one small wheel (the real one is ~80 MB; its test is in test_wheelhouse)."""
    folder = Path(tempfile.mkdtemp(prefix="twostage-wheelhouse-"))
    with zipfile.ZipFile(folder / "tiny-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("tiny/__init__.py", "")
    write_requirements(folder)
    return str(folder)


#: Every test stack pins this AMI (``amiId=None`` unsets it) and points at a built wheelhouse.
#: ``allowDirty``: the tests run on working trees with edits; test_bundle tests the refusal.
PINNED = {"amiId": FAKE_AMI, "wheelhouse": tiny_wheelhouse(), "allowDirty": "true"}


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]


@dataclass
class StackRun:
    outputs: dict[str, Any]
    resources: list[Registered]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, got {[r.name for r in found]}"
        return found[0]


def _short(typ: str) -> str:
    return typ.rsplit(":", 1)[-1].lower()


class RecordingMocks(pulumi.runtime.Mocks):
    """Hand-written fake of the AWS provider: echoes inputs, fills computed outputs."""

    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._ips = 10

    def new_resource(self, args):
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs)))
        rid = f"{_short(args.typ)}-{args.name}"
        state = dict(args.inputs)
        state.setdefault("name", args.name)
        state.setdefault("arn", f"arn:aws:{_short(args.typ)}:us-east-1:123456789012:{args.name}")
        if args.typ == "aws:s3/bucket:Bucket":
            state.update(bucket=FAKE_BUCKET, arn=f"arn:aws:s3:::{FAKE_BUCKET}")
        elif args.typ == "aws:ec2/instance:Instance":
            self._ips += 1
            state["privateIp"] = f"10.42.16.{self._ips}"
        elif args.typ == "aws:ec2/vpcEndpoint:VpcEndpoint":
            rid = f"vpce-{args.name}"
        elif args.typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{args.name}"  # KMS checks the form
        elif args.typ == "aws:kms/key:Key":
            state["arn"] = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{args.name}"
            state["keyId"] = args.name
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif args.typ == "aws:autoscaling/group:Group":
            state["arn"] = (
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:"
                f"0f0e0d0c-0b0a-0908-0706-050403020100:autoScalingGroupName/{args.inputs['name']}"
            )
        return rid, state

    def call(self, args):
        self.calls.append((args.token, dict(args.args)))
        token = args.token
        if token == "aws:index/getRegion:getRegion":
            return {"region": "us-east-1", "name": "us-east-1", "id": "us-east-1"}
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/me", "id": ACCOUNT}
        if token == "aws:iam/getSessionContext:getSessionContext":
            # The mocked caller is an IAM user: its own ARN is the issuer.
            arn = args.args["arn"]
            return {"arn": arn, "issuerArn": arn, "issuerName": arn.rsplit("/", 1)[-1], "id": arn}
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args["name"], "value": FAKE_AMI, "type": "String"}
        if token == "aws:ec2/getAmi:getAmi":
            return {"id": FAKE_AMI, "rootDeviceName": "/dev/sda1", "architecture": "x86_64"}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            return {"locations": list(OFFERED_AZS), "instanceTypes": ["p4d.24xlarge"]}
        if token == "aws:ec2/getSubnet:getSubnet":
            return {
                "id": args.args["id"],
                "availabilityZone": "us-east-1c",
                "vpcId": "vpc-0abc1234",
            }
        if token == "aws:ec2/getPrefixList:getPrefixList":
            return {"id": S3_PREFIX_LIST, "name": args.args["name"], "cidrBlocks": []}
        if token == "aws:ec2/getVpc:getVpc":
            return {"id": args.args["id"], "cidrBlock": VPC_CIDR_EXISTING}
        raise AssertionError(f"unmocked invoke {token}")


def run_stack(config: dict[str, str] | None = None, *, stack: str = "test") -> StackRun:
    """Run ``infra.__main__.main()`` with ``twostage:<key>`` config; return outputs + resources."""
    from infra.__main__ import main

    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="twostage", stack=stack, preview=False)
    values = {"aws:region": "us-east-1"}
    merged = {**PINNED, **(config or {})}
    values.update({f"twostage:{k}": str(v) for k, v in merged.items() if v is not None})
    pulumi.runtime.set_all_config(values)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def _program():
        outputs = main()
        return pulumi.Output.all(**outputs).apply(resolved.update)

    _program()
    return StackRun(resolved, mocks.resources, mocks.calls)
