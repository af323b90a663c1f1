"""The real program under Pulumi mocks: what `pulumi up` would create, and its security properties."""

from __future__ import annotations

import base64
import ipaddress
import json
import runpy
import tempfile
from pathlib import Path

import pytest
from infra_mocks import (
    FAKE_AMI,
    FAKE_BUCKET,
    PINNED,
    S3_PREFIX_LIST,
    VPC_CIDR_EXISTING,
    RecordingMocks,
    StackRun,
    run_stack,
)
from sdk_types import check_resource

from infra.bundle import build_bundle, repo_root
from infra.errors import InfraError

ROOT = Path(__file__).resolve().parents[2]

# COMMON.md "Pulumi stack outputs": the launch tasks read exactly these.
CONTRACT_OUTPUTS = {
    "region",
    "availability_zone",
    "bucket",
    "run_prefix",
    "cluster_name",
    "node_count",
    "instance_type",
    "instance_types",
    "spot",
    "allow_internet_egress",
    "ami_id",
    "autoscaling_group_name",
    "launch_template_id",
    "controller_instance_id",
    "controller_instance_type",
    "security_group_id",
    "subnet_id",
}

LT = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
ASG = "aws:autoscaling/group:Group"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
WORLD = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
GIT_URL = "https://github.com/example/twostage.git"
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def four_on_demand() -> StackRun:
    return run_stack({"nodeCount": 4, "spot": "false"})


# --- the default plan: only aws:region set -----------------------------------------------------


def test_default_stack_is_one_spot_p4d_node_in_a_group(default_stack: StackRun):
    out = default_stack.outputs
    assert set(out) == CONTRACT_OUTPUTS
    assert out["node_count"] == 1
    assert out["instance_type"] == "p4d.24xlarge" and out["spot"] is True
    assert out["instance_types"] == ["p4d.24xlarge"]
    assert out["region"] == "us-east-1"
    assert out["allow_internet_egress"] is False
    assert out["bucket"] == FAKE_BUCKET
    assert out["run_prefix"] == f"s3://{FAKE_BUCKET}/runs"
    assert out["cluster_name"] == "twostage-test"
    assert out["autoscaling_group_name"] == "twostage-test-nodes"
    assert out["ami_id"] == FAKE_AMI
    # No AZ configured: the first (sorted) AZ that offers p4d.24xlarge.
    assert out["availability_zone"] == "us-east-1a"
    lt = default_stack.one(LT)
    assert lt.inputs["instanceType"] == "p4d.24xlarge"
    assert out["launch_template_id"].endswith(lt.name)
    group = default_stack.one(ASG).inputs
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (0, 1, 1)


def test_every_input_has_the_sdk_type():
    """Unknown keys and wrong shapes pass the mock engine but fail the real provider."""
    for config in (
        {},
        {"nodeCount": 4, "spot": "false"},
        {"vpcId": "vpc-0abc1234", "subnetId": "subnet-0abc1234"},
        {"adminCidr": "203.0.113.7/32", "keyName": "me"},
        {"repoUrl": GIT_URL, "repoRef": GIT_SHA, "allowInternetEgress": "true"},
        {"allowInternetEgress": "true"},
        {"vpcId": "vpc-0abc1234", "subnetId": "subnet-0abc1234", "allowInternetEgress": "true"},
        {"instanceTypes": "p4d.24xlarge,p4de.24xlarge,p5.48xlarge", "spotMaxPrice": "20"},
    ):
        run = run_stack(config)
        errors = [e for r in run.resources for e in check_resource(r.typ, r.inputs)]
        assert errors == [], config


def test_the_sdk_type_check_catches_what_the_provider_would_refuse():
    bad = {"networkInterfaces": [{"deleteOnTermination": True, "deviceIndx": 0}]}
    errors = check_resource(LT, bad)
    assert any("deleteOnTermination: expected str" in e for e in errors)
    assert any("deviceIndx: not an input" in e for e in errors)


def test_ami_is_the_pinned_one_and_never_looked_up(default_stack: StackRun):
    assert default_stack.one(LT).inputs["imageId"] == FAKE_AMI
    assert default_stack.one(INSTANCE).inputs["ami"] == FAKE_AMI  # the controller
    assert not [t for t, _ in default_stack.calls if t == "aws:ssm/getParameter:getParameter"]
    other = run_stack({"amiId": "ami-0fedcba9876543210"})
    assert other.one(LT).inputs["imageId"] == "ami-0fedcba9876543210"


def test_an_unpinned_ami_stops_the_plan_with_the_pin_command():
    with pytest.raises(InfraError, match="twostage:amiId: no AMI pinned") as err:
        run_stack({"amiId": None})
    assert "python -m infra.pin_ami" in str(err.value)


def test_spot_through_the_groups_mixed_instances_policy(default_stack: StackRun):
    lt = default_stack.one(LT).inputs
    # A group with a mixed instances policy refuses a template with market options.
    assert "instanceMarketOptions" not in lt
    group = default_stack.one(ASG).inputs
    dist = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 0
    assert dist["onDemandBaseCapacity"] == 0
    assert dist["spotAllocationStrategy"] == "price-capacity-optimized"
    assert "spotMaxPrice" not in dist
    assert group["capacityRebalance"] is True
    priced = run_stack({"spotMaxPrice": "12.5"}).one(ASG).inputs
    assert priced["mixedInstancesPolicy"]["instancesDistribution"]["spotMaxPrice"] == "12.5"


def test_allowed_instance_types_become_overrides():
    run = run_stack({"instanceTypes": "p5.48xlarge,p4d.24xlarge,p4de.24xlarge"})
    lt_spec = run.one(ASG).inputs["mixedInstancesPolicy"]["launchTemplate"]
    assert [o["instanceType"] for o in lt_spec["overrides"]] == [
        "p5.48xlarge",
        "p4d.24xlarge",
        "p4de.24xlarge",
    ]
    assert (
        lt_spec["launchTemplateSpecification"]["launchTemplateId"]
        == run.outputs["launch_template_id"]
    )
    # One template for every type: EFA count of the smallest (p4d: 4 network cards).
    assert len(run.one(LT).inputs["networkInterfaces"]) == 4
    assert run.outputs["instance_type"] == "p5.48xlarge"


def test_group_owns_nodes_in_the_placement_group_and_subnet(default_stack: StackRun):
    group = default_stack.one(ASG)
    placement = default_stack.one("aws:ec2/placementGroup:PlacementGroup")
    assert placement.inputs["strategy"] == "cluster"
    assert group.inputs["placementGroup"] == placement.name
    assert group.inputs["vpcZoneIdentifiers"] == [default_stack.outputs["subnet_id"]]
    assert group.inputs["waitForCapacityTimeout"] == "0"  # `pulumi up` never waits on spot
    tags = {t["key"]: (t["value"], t["propagateAtLaunch"]) for t in group.inputs["tags"]}
    assert tags["twostage:cluster"] == ("twostage-test", True)
    assert tags["twostage:role"] == ("node", True)
    # Only the controller is a plain instance; nodes exist only through the group.
    (instance,) = default_stack.of_type(INSTANCE)
    assert instance.inputs["tags"]["twostage:role"] == "controller"


def test_four_on_demand_nodes(four_on_demand: StackRun):
    group = four_on_demand.one(ASG).inputs
    assert (group["maxSize"], group["desiredCapacity"]) == (4, 4)
    dist = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 100
    assert group.get("capacityRebalance") is False
    assert four_on_demand.outputs["spot"] is False
    assert len(four_on_demand.of_type(INSTANCE)) == 1  # the controller, not the nodes


def test_root_volume_is_encrypted_gp3_of_configured_size(default_stack: StackRun):
    (mapping,) = default_stack.one(LT).inputs["blockDeviceMappings"]
    assert mapping["deviceName"] == "/dev/sda1"  # the AMI's root device, so it resizes root
    assert mapping["ebs"]["volumeSize"] == 1000
    assert mapping["ebs"]["volumeType"] == "gp3"
    assert mapping["ebs"]["encrypted"] == "true"
    small = run_stack({"rootVolumeGb": 200})
    assert small.one(LT).inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 200
    root = default_stack.one(INSTANCE).inputs["rootBlockDevice"]
    assert root["encrypted"] is True


def test_imdsv2_required_with_one_hop_everywhere(default_stack: StackRun):
    lt = default_stack.one(LT).inputs
    for meta in (lt["metadataOptions"], default_stack.one(INSTANCE).inputs["metadataOptions"]):
        assert meta["httpTokens"] == "required"
        assert meta["httpEndpoint"] == "enabled"
        assert meta["httpPutResponseHopLimit"] == 1  # no role credentials for containers
    assert lt["instanceInitiatedShutdownBehavior"] == "terminate"


def test_the_group_alone_says_where_nodes_go(default_stack: StackRun):
    # Subnet (hence AZ) and placement group in one place: the group, not the template too.
    lt = default_stack.one(LT).inputs
    assert "placement" not in lt
    assert all("subnetId" not in nic for nic in lt["networkInterfaces"])
    subnet = next(s for s in default_stack.of_type("aws:ec2/subnet:Subnet") if "private" in s.name)
    assert subnet.inputs["availabilityZone"] == default_stack.outputs["availability_zone"]
    assert default_stack.one(ASG).inputs["vpcZoneIdentifiers"] == [f"subnet-{subnet.name}"]


def test_p4d_gets_four_efa_interfaces_in_the_node_subnet(default_stack: StackRun):
    nics = default_stack.one(LT).inputs["networkInterfaces"]
    assert [n["interfaceType"] for n in nics] == ["efa"] * 4
    assert [n["networkCardIndex"] for n in nics] == [0, 1, 2, 3]
    assert [n["deviceIndex"] for n in nics] == [0, 1, 1, 1]
    sg_id = default_stack.outputs["security_group_id"]
    for nic in nics:
        assert nic["securityGroups"] == [sg_id]
        assert nic["deleteOnTermination"] == "true"
        assert "associatePublicIpAddress" not in nic


def test_efa_count_above_what_the_type_supports_is_refused():
    with pytest.raises(InfraError, match="twostage:efaInterfaces: 8 EFA.*p4d.24xlarge supports 4"):
        run_stack({"efaInterfaces": "8"})
    with pytest.raises(InfraError, match="twostage:efaInterfaces"):
        run_stack({"instanceTypes": "p5.48xlarge,p4d.24xlarge", "efaInterfaces": "32"})
    assert len(run_stack({"efaInterfaces": "2"}).one(LT).inputs["networkInterfaces"]) == 2


def test_instance_type_without_efa_gets_one_plain_interface():
    run = run_stack({"instanceType": "g5.12xlarge"})
    (nic,) = run.one(LT).inputs["networkInterfaces"]
    assert "interfaceType" not in nic
    assert run.one(LT).inputs["instanceType"] == "g5.12xlarge"


def _user_data(run: StackRun) -> str:
    return base64.b64decode(run.one(LT).inputs["userData"]).decode()


def test_node_user_data_points_at_this_stacks_bucket_and_checks_the_bundle_hash(default_stack):
    user_data = _user_data(default_stack)
    assert f"TWOSTAGE_BUCKET={FAKE_BUCKET}\n" in user_data
    assert f"TWOSTAGE_RUN_PREFIX=s3://{FAKE_BUCKET}/runs\n" in user_data
    assert "TWOSTAGE_GROUP=twostage-test-nodes\n" in user_data
    assert "AWS_DEFAULT_REGION=us-east-1\n" in user_data
    assert "TWOSTAGE_NODE_INDEX" not in user_data  # ranks come from the group, per launch
    keys = [o.inputs["key"] for o in default_stack.of_type("aws:s3/bucketObjectv2:BucketObjectv2")]
    assert sorted(keys) == ["bootstrap/twostage-src.zip", "bootstrap/wheelhouse.tar"]
    assert "bootstrap/twostage-src.zip" in user_data
    digest = build_bundle(repo_root(), Path(tempfile.mkdtemp()) / "b.zip", allow_dirty=True)[1]
    assert f"if digest != {digest!r}:" in user_data  # never unpacked unless it matches
    assert "trainer.launch.node_agent" in user_data
    controller = default_stack.one(INSTANCE).inputs["userData"]
    assert digest in controller and "trainer.launch.controller" in controller
    assert "TWOSTAGE_NODE_COUNT=1\n" in controller
    assert "TWOSTAGE_AVAILABILITY_ZONE=us-east-1a\n" in controller


def test_repo_url_clones_a_pinned_commit_instead_of_uploading():
    run = run_stack({"repoUrl": GIT_URL, "repoRef": GIT_SHA, "allowInternetEgress": "true"})
    keys = [o.inputs["key"] for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")]
    assert keys == ["bootstrap/wheelhouse.tar"]  # no source bundle; the wheels still come locked
    user_data = _user_data(run)
    assert GIT_URL in user_data
    assert f"fetch --depth 1 origin {GIT_SHA}" in user_data
    assert f'test "$(git -C /opt/twostage rev-parse HEAD)" = {GIT_SHA}' in user_data


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"repoUrl": GIT_URL, "allowInternetEgress": "true"}, "twostage:repoRef"),
        (
            {"repoUrl": GIT_URL, "repoRef": "main", "allowInternetEgress": "true"},
            "twostage:repoRef",
        ),
        ({"repoUrl": GIT_URL, "repoRef": GIT_SHA}, "twostage:repoUrl"),
    ],
)
def test_git_mode_needs_a_commit_sha_and_a_way_out(config, key):
    with pytest.raises(InfraError, match=key):
        run_stack(config)


def test_user_data_installs_the_pinned_wheelhouse_without_an_index(default_stack: StackRun):
    from infra.wheelhouse import pack_wheelhouse

    digest = pack_wheelhouse(Path(PINNED["wheelhouse"]))[1]
    objects = {
        o.inputs["key"]: o for o in default_stack.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    }
    assert objects["bootstrap/wheelhouse.tar"].inputs["checksumAlgorithm"] == "SHA256"
    for user_data in (_user_data(default_stack), default_stack.one(INSTANCE).inputs["userData"]):
        assert f"if digest != {digest!r}:" in user_data
        assert "--no-index --find-links /opt/twostage-wheelhouse" in user_data
        assert (
            "--require-hashes --no-deps -r /opt/twostage-wheelhouse/requirements.txt" in user_data
        )
        assert "--no-index --no-deps --no-build-isolation" in user_data
        assert "index-url" not in user_data and "pypi" not in user_data.lower()
        assert all("--no-index" in line for line in user_data.splitlines() if "pip install" in line)


def test_an_unbuilt_wheelhouse_stops_the_plan_with_the_build_command(tmp_path):
    with pytest.raises(InfraError, match="twostage:wheelhouse: .*`invoke wheelhouse"):
        run_stack({"wheelhouse": str(tmp_path)})


# --- network -----------------------------------------------------------------------------------


def _world_open(rule) -> bool:
    for key in ("cidrIpv4", "cidrIpv6"):
        cidr = rule.inputs.get(key)
        if cidr and ipaddress.ip_network(cidr, strict=False) in WORLD:
            return True
    return False


def _inline_rules(run: StackRun, kind: str) -> list[dict]:
    rules = []
    for typ in (SG, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
        for sg in run.of_type(typ):
            rules.extend(sg.inputs.get(kind) or [])
    return rules


@pytest.mark.parametrize("config", [{}, {"adminCidr": "203.0.113.7/32"}, {"nodeCount": 4}])
def test_no_ingress_open_to_the_world(config):
    run = run_stack(config)
    assert run.of_type(INGRESS)
    assert not [r.name for r in run.of_type(INGRESS) if _world_open(r)]
    assert _inline_rules(run, "ingress") == []  # all ingress lives in the audited rule resources


def test_only_ingress_is_from_the_group_itself_without_admin_cidr(default_stack: StackRun):
    # (The endpoints' own security group takes HTTPS from the cluster: tested below.)
    (rule,) = [r for r in default_stack.of_type(INGRESS) if "endpoints" not in r.name]
    sg_id = default_stack.outputs["security_group_id"]
    assert rule.inputs["referencedSecurityGroupId"] == sg_id
    assert rule.inputs["securityGroupId"] == sg_id
    assert not any(r.inputs.get("fromPort") == 22 for r in default_stack.of_type(INGRESS))
    assert "keyName" not in default_stack.one(LT).inputs


def test_ssh_only_from_admin_cidr_when_configured():
    run = run_stack({"adminCidr": "203.0.113.7/32", "keyName": "me"})
    ssh = [r for r in run.of_type(INGRESS) if r.inputs.get("fromPort") == 22]
    assert len(ssh) == 1
    assert ssh[0].inputs["cidrIpv4"] == "203.0.113.7/32"
    assert ssh[0].inputs["toPort"] == 22 and ssh[0].inputs["ipProtocol"] == "tcp"
    assert run.one(LT).inputs["keyName"] == "me"


def _routes_to_the_world(run: StackRun) -> list:
    routes = [
        r
        for rt in run.of_type("aws:ec2/routeTable:RouteTable")
        for r in rt.inputs.get("routes") or []
    ]
    routes += [r.inputs for r in run.of_type("aws:ec2/route:Route")]
    return [
        r
        for r in routes
        if ipaddress.ip_network(
            r.get("cidrBlock")
            or r.get("ipv6CidrBlock")
            or r.get("destinationCidrBlock")
            or "10.0.0.0/8"
        )
        in WORLD
        or r.get("ipv6CidrBlock") == "::/0"
    ]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"nodeCount": 4},
        {"adminCidr": "203.0.113.7/32"},
        {"vpcId": "vpc-0abc1234", "subnetId": "subnet-0abc1234"},
    ],
)
def test_no_route_or_rule_to_the_internet_by_default(config):
    run = run_stack(config)
    assert not [r.name for r in run.of_type(EGRESS) if _world_open(r)]
    assert not [r.name for r in run.of_type(INGRESS) if _world_open(r)]
    assert _routes_to_the_world(run) == []
    for typ in ("natGateway:NatGateway", "internetGateway:InternetGateway", "eip:Eip"):
        assert not run.of_type(f"aws:ec2/{typ}"), typ
    assert _inline_rules(run, "egress") == []


def test_machines_reach_s3_and_the_endpoints_on_443_only(default_stack: StackRun):
    endpoint_sg = next(s for s in default_stack.of_type(SG) if "endpoints" in s.name)
    sgs = {f"securitygroup-{s.name}": s.name for s in default_stack.of_type(SG)}
    for who in ("nodes", "controller"):
        sg_id = next(i for i, n in sgs.items() if n.endswith(f"-{who}-sg"))
        rules = [
            r.inputs for r in default_stack.of_type(EGRESS) if r.inputs["securityGroupId"] == sg_id
        ]
        outside = [r for r in rules if r.get("referencedSecurityGroupId") != sg_id]
        assert {(r["ipProtocol"], r["fromPort"], r["toPort"]) for r in outside} == {
            ("tcp", 443, 443)
        }
        targets = {r.get("prefixListId") or r.get("referencedSecurityGroupId") for r in outside}
        assert targets == {S3_PREFIX_LIST, f"securitygroup-{endpoint_sg.name}"}, who
    # The endpoints accept HTTPS from the cluster's two security groups and nothing else.
    ingress = [r.inputs for r in default_stack.of_type(INGRESS) if "endpoints" in r.name]
    assert {r["referencedSecurityGroupId"] for r in ingress} == {
        default_stack.outputs["security_group_id"],
        next(i for i, n in sgs.items() if n.endswith("-controller-sg")),
    }
    assert {(r["fromPort"], r["toPort"]) for r in ingress} == {(443, 443)}


def test_interface_endpoints_for_every_api_the_machines_call(default_stack: StackRun):
    interfaces = [
        e.inputs
        for e in default_stack.of_type(ENDPOINT)
        if e.inputs["vpcEndpointType"] == "Interface"
    ]
    assert {e["serviceName"].rsplit(".", 1)[1] for e in interfaces} == {
        "ssm",
        "ssmmessages",
        "ec2messages",
        "autoscaling",
        "ec2",
    }
    for e in interfaces:
        assert e["privateDnsEnabled"] is True
        assert e["subnetIds"] == [default_stack.outputs["subnet_id"]]


def test_every_aws_api_the_cloud_side_code_calls_has_an_endpoint():
    """A boto3 client added to the nodes' or the controller's code without its endpoint would
    hang at the first call on a machine with no route out."""
    import re

    from infra.egress import INTERFACE_SERVICES

    sources = [*(ROOT / "trainer").rglob("*.py"), *(ROOT / "artifacts").rglob("*.py")]
    called = {
        m
        for path in sources
        for m in re.findall(r"""client\(\s*["']([a-z0-9-]+)["']""", path.read_text())
    }
    assert {"autoscaling", "ec2", "ssm", "s3"} <= called  # the scan sees the real calls
    assert called - {"s3"} <= set(INTERFACE_SERVICES)


def test_the_s3_endpoint_reaches_only_the_run_bucket(default_stack: StackRun):
    (policy,) = default_stack.of_type("aws:ec2/vpcEndpointPolicy:VpcEndpointPolicy")
    s3 = next(
        e for e in default_stack.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Gateway"
    )
    assert policy.inputs["vpcEndpointId"] == f"vpce-{s3.name}"
    doc = json.loads(policy.inputs["policy"])
    resources = {r for st in doc["Statement"] for r in st["Resource"]}
    assert resources == {f"arn:aws:s3:::{FAKE_BUCKET}", f"arn:aws:s3:::{FAKE_BUCKET}/*"}
    assert all(st["Effect"] == "Allow" and "s3:*" not in st["Action"] for st in doc["Statement"])


def test_cluster_credentials_are_refused_outside_the_vpc_endpoint(default_stack: StackRun):
    policy = json.loads(default_stack.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    (deny,) = [s for s in policy["Statement"] if "aws:SourceVpce" in json.dumps(s)]
    s3 = next(
        e for e in default_stack.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Gateway"
    )
    assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {
        "StringEquals": {"aws:PrincipalTag/twostage:cluster": "twostage-test"},
        "StringNotEquals": {"aws:SourceVpce": f"vpce-{s3.name}"},
    }
    # The roles carry the tag the condition keys on.
    for role in default_stack.of_type("aws:iam/role:Role"):
        assert role.inputs["tags"]["twostage:cluster"] == "twostage-test"


def test_allow_internet_egress_keeps_the_nat_and_https_anywhere():
    run = run_stack({"allowInternetEgress": "true"})
    assert run.outputs["allow_internet_egress"] is True  # `invoke pretrain` reads it (report_to)
    world = [r for r in run.of_type(EGRESS) if _world_open(r)]
    assert len(world) == 2  # nodes and controller
    for rule in world:
        assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == (
            "tcp",
            443,
            443,
        )
    assert run.one("aws:ec2/natGateway:NatGateway")
    private_rt = next(
        r for r in run.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name
    )
    assert private_rt.inputs["routes"][0]["natGatewayId"].startswith("natgateway-")
    assert not [e for e in run.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Interface"]


def test_created_network_keeps_nodes_private_and_s3_on_the_gateway_endpoint(default_stack):
    subnets = default_stack.of_type("aws:ec2/subnet:Subnet")
    assert all(s.inputs.get("mapPublicIpOnLaunch") is False for s in subnets)
    assert all(s.inputs["availabilityZone"] == "us-east-1a" for s in subnets)
    (endpoint,) = [
        e for e in default_stack.of_type(ENDPOINT) if e.inputs["vpcEndpointType"] == "Gateway"
    ]
    assert endpoint.inputs["serviceName"] == "com.amazonaws.us-east-1.s3"
    private_rt = next(
        r for r in default_stack.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name
    )
    assert endpoint.inputs["routeTableIds"] == [f"routetable-{private_rt.name}"]
    assert not private_rt.inputs.get("routes")
    default_sg = default_stack.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert not default_sg.inputs.get("ingress") and not default_sg.inputs.get("egress")


def test_existing_network_creates_only_the_security_groups():
    run = run_stack({"vpcId": "vpc-0abc1234", "subnetId": "subnet-0abc1234"})
    assert not run.of_type("aws:ec2/vpc:Vpc") and not run.of_type("aws:ec2/natGateway:NatGateway")
    assert [sg.inputs["vpcId"] for sg in run.of_type(SG)] == ["vpc-0abc1234"] * 2
    assert run.outputs["subnet_id"] == "subnet-0abc1234"
    assert run.outputs["availability_zone"] == "us-east-1c"
    assert run.one(ASG).inputs["vpcZoneIdentifiers"] == ["subnet-0abc1234"]
    assert run.one(INSTANCE).inputs["subnetId"] == "subnet-0abc1234"
    # No endpoints of ours there: HTTPS to the VPC's own CIDR (its endpoints) and S3 only.
    assert not run.of_type(ENDPOINT)
    cidrs = {r.inputs.get("cidrIpv4") for r in run.of_type(EGRESS)} - {None}
    assert cidrs == {VPC_CIDR_EXISTING}
    assert "aws:SourceVpce" not in run.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"]


def test_a_subnet_outside_the_configured_vpc_stops_the_plan():
    # The mock's subnet-0abc1234 lies in vpc-0abc1234.
    with pytest.raises(Exception, match="twostage:subnetId: subnet-0abc1234 is in vpc-0abc1234"):
        run_stack({"vpcId": "vpc-0fff9999", "subnetId": "subnet-0abc1234"})


def test_controller_has_no_ingress_and_https_egress_only(default_stack: StackRun):
    controller_sg = next(s for s in default_stack.of_type(SG) if "controller" in s.name)
    sg_id = f"securitygroup-{controller_sg.name}"
    assert not [r for r in default_stack.of_type(INGRESS) if r.inputs["securityGroupId"] == sg_id]
    egress = [r for r in default_stack.of_type(EGRESS) if r.inputs["securityGroupId"] == sg_id]
    assert {(r.inputs["fromPort"], r.inputs["toPort"]) for r in egress} == {(443, 443)}
    controller = default_stack.one(INSTANCE).inputs
    assert controller["vpcSecurityGroupIds"] == [sg_id]
    assert controller["instanceType"] == "t3.small"
    assert controller["associatePublicIpAddress"] is False
    assert controller["subnetId"] == default_stack.outputs["subnet_id"]  # the private subnet
    assert "instanceMarketOptions" not in controller  # on-demand


def test_configured_availability_zone_is_used():
    run = run_stack({"availabilityZone": "us-east-1f"})
    assert run.outputs["availability_zone"] == "us-east-1f"
    assert not [t for t, _ in run.calls if "getInstanceTypeOfferings" in t]


# --- storage -----------------------------------------------------------------------------------


def test_bucket_encrypted_versioned_private(default_stack: StackRun):
    sse = default_stack.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    (rule,) = sse.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    key = default_stack.one("aws:kms/key:Key")
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].endswith(f"key/{key.name}")
    assert rule["bucketKeyEnabled"] is True  # hundreds of PUT/s without a KMS call each
    assert key.inputs["enableKeyRotation"] is True
    versioning = default_stack.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    block = default_stack.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    for key in (
        "blockPublicAcls",
        "blockPublicPolicy",
        "ignorePublicAcls",
        "restrictPublicBuckets",
    ):
        assert block.inputs[key] is True, key
    bucket_id = f"bucket-{default_stack.one('aws:s3/bucket:Bucket').name}"
    assert (
        sse.inputs["bucket"] == versioning.inputs["bucket"] == block.inputs["bucket"] == bucket_id
    )
    bucket = default_stack.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["bucketPrefix"] == "twostage-"
    assert bucket.inputs.get("forceDestroy") is False


def test_bucket_policy_denies_non_tls(default_stack: StackRun):
    policy = json.loads(default_stack.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])
    deny = [
        s
        for s in policy["Statement"]
        if s["Effect"] == "Deny"
        and s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert len(deny) == 1
    assert set(deny[0]["Resource"]) == {
        f"arn:aws:s3:::{FAKE_BUCKET}",
        f"arn:aws:s3:::{FAKE_BUCKET}/*",
    }
    assert deny[0]["Principal"] == "*" and deny[0]["Action"] == "s3:*"


def test_lifecycle_aborts_multipart_and_expires_noncurrent_versions(default_stack: StackRun):
    rules = default_stack.one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
    ).inputs["rules"]
    assert all(r["status"] == "Enabled" for r in rules)
    aborts = [
        r["abortIncompleteMultipartUpload"]["daysAfterInitiation"]
        for r in rules
        if "abortIncompleteMultipartUpload" in r
    ]
    assert aborts and 1 <= aborts[0] <= 7
    expiries = [
        r["noncurrentVersionExpiration"]["noncurrentDays"]
        for r in rules
        if "noncurrentVersionExpiration" in r
    ]
    assert expiries == [30]
    custom = run_stack({"checkpointRetentionDays": 7}).one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
    )
    assert [
        r["noncurrentVersionExpiration"]["noncurrentDays"]
        for r in custom.inputs["rules"]
        if "noncurrentVersionExpiration" in r
    ] == [7]


# --- IAM -----------------------------------------------------------------------------------------


def _role_policies(run: StackRun, role_name: str) -> list[dict]:
    role_id = f"role-{role_name}"
    return [
        json.loads(rp.inputs["policy"])
        for rp in run.of_type("aws:iam/rolePolicy:RolePolicy")
        if rp.inputs["role"] == role_id
    ]


def test_node_role_has_no_managed_policy_and_no_parameter_store(default_stack: StackRun):
    # No AmazonSSMManagedInstanceCore (it grants ssm:GetParameter* on *): inline policies only.
    assert not default_stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    docs = _role_policies(default_stack, "twostage-test-node-role")
    assert len(docs) == 3  # SSM agent, bucket, leave the group (the key policy names the role)
    statements = [s for d in docs for s in d["Statement"]]
    denies = [a for s in statements if s["Effect"] == "Deny" for a in s["Action"]]
    assert {"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"} <= set(denies)
    bucket_arn = f"arn:aws:s3:::{FAKE_BUCKET}"
    writes = [s for s in statements if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == [[f"{bucket_arn}/runs/*"]]
    leave = [
        s for s in statements if "autoscaling:TerminateInstanceInAutoScalingGroup" in s["Action"]
    ]
    assert len(leave[0]["Resource"]) == 1
    assert leave[0]["Resource"][0].endswith("autoScalingGroupName/twostage-test-nodes")
    trust = json.loads(default_stack.of_type("aws:iam/role:Role")[0].inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = next(
        p
        for p in default_stack.of_type("aws:iam/instanceProfile:InstanceProfile")
        if "node" in p.name
    )
    assert default_stack.one(LT).inputs["iamInstanceProfile"]["arn"].endswith(profile.name)


def test_controller_role_is_scoped_to_this_cluster(default_stack: StackRun):
    docs = _role_policies(default_stack, "twostage-test-controller-role")
    statements = {s.get("Sid"): s for d in docs for s in d["Statement"]}
    scale = statements["ScaleThisGroup"]
    assert scale["Resource"][0].endswith("autoScalingGroupName/twostage-test-nodes")
    assert scale["Condition"] == {
        "StringEquals": {"aws:ResourceTag/twostage:cluster": "twostage-test"}
    }
    send = statements["RunCommandOnThisCluster"]
    assert send["Resource"] == ["arn:aws:ec2:us-east-1:123456789012:instance/*"]
    assert send["Condition"] == {
        "StringEquals": {"ssm:resourceTag/aws:autoscaling:groupName": "twostage-test-nodes"}
    }
    assert statements["RunCommandDocument"]["Resource"] == [
        "arn:aws:ssm:us-east-1:123456789012:document/twostage-test-run-script"
    ]
    doc = default_stack.one("aws:ssm/document:Document").inputs
    assert doc["name"] == "twostage-test-run-script" and doc["documentType"] == "Command"
    params = json.loads(doc["content"])["parameters"]
    assert set(params) == {"script", "executionTimeout"}
    assert all(p["type"] == "String" and p["allowedPattern"] for p in params.values())
    every_action = {a for s in statements.values() for a in s["Action"]}
    assert "kms:Sign" not in json.dumps(docs)
    assert not {"ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"} & every_action
    profile = next(
        p
        for p in default_stack.of_type("aws:iam/instanceProfile:InstanceProfile")
        if "controller" in p.name
    )
    assert default_stack.one(INSTANCE).inputs["iamInstanceProfile"] == profile.name


def _key_policy(run: StackRun) -> dict:
    return json.loads(run.one("aws:kms/key:Key").inputs["policy"])


def _role_arn(run: StackRun, name: str) -> str:
    (role,) = [r for r in run.of_type("aws:iam/role:Role") if r.name == name]
    return f"arn:aws:iam::123456789012:role/{role.name}"  # what the provider returns for it


def test_the_key_policy_names_the_created_roles_and_the_deployer(default_stack: StackRun):
    key = default_stack.one("aws:kms/key:Key")
    assert key.inputs["keyUsage"] == "ENCRYPT_DECRYPT"  # kms:Sign does not exist for it
    policy = _key_policy(default_stack)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    roles = sorted(
        _role_arn(default_stack, f"twostage-test-{r}-role") for r in ("node", "controller")
    )
    deployer = "arn:aws:iam::123456789012:user/me"  # the mocked caller's own IAM user
    use = by_sid["UseOnlyThroughS3ForTheRunBucket"]
    assert use["Principal"] == {"AWS": [*roles, deployer]}
    assert use["Condition"] == {
        "StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"},
        "StringLike": {
            "kms:EncryptionContext:aws:s3:arn": [
                f"arn:aws:s3:::{FAKE_BUCKET}",
                f"arn:aws:s3:::{FAKE_BUCKET}/*",
            ]
        },
    }
    assert by_sid["ClusterRolesNothingElse"]["Condition"]["ArnEquals"] == {
        "aws:PrincipalArn": roles
    }
    admin = by_sid["AccountAdministersTheKeyOnly"]
    assert admin["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert "kms:PutKeyPolicy" in admin["Action"]
    assert not {"kms:Decrypt", "kms:GenerateDataKey*", "kms:CreateGrant"} & set(admin["Action"])
    assert by_sid["NobodySigns"] == {
        "Sid": "NobodySigns",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "kms:Sign",
        "Resource": "*",
    }


def test_the_owner_principal_is_named_only_when_set(default_stack: StackRun):
    owner = "arn:aws:iam::123456789012:role/data-owner"
    assert owner not in json.dumps(_key_policy(default_stack))
    run = run_stack({"ownerPrincipalArn": owner})
    (use,) = [
        s for s in _key_policy(run)["Statement"] if s["Sid"] == "UseOnlyThroughS3ForTheRunBucket"
    ]
    assert owner in use["Principal"]["AWS"]
    with pytest.raises(InfraError, match="^twostage:ownerPrincipalArn"):
        run_stack({"ownerPrincipalArn": "arn:aws:sts::123456789012:assumed-role/Admin/alice"})


def test_no_role_policy_grants_kms_and_nothing_grants_sign(default_stack: StackRun):
    every = json.dumps(
        [
            json.loads(p.inputs["policy"])
            for p in default_stack.of_type("aws:iam/rolePolicy:RolePolicy")
        ]
    )
    # The key policy is the one place that says who uses the key.
    assert '"kms:' not in every
    assert "kms:Sign" not in json.dumps(
        [s for s in _key_policy(default_stack)["Statement"] if s["Effect"] == "Allow"]
    )


def test_nothing_is_uploaded_before_the_bucket_encrypts_with_the_key(default_stack: StackRun):
    """The bundle and the wheelhouse are written after the default encryption (and the key)."""
    order = [r.typ for r in default_stack.resources]
    sse = order.index(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    key = order.index("aws:kms/key:Key")
    roles = [i for i, t in enumerate(order) if t == "aws:iam/role:Role"]
    objects = [i for i, t in enumerate(order) if t == "aws:s3/bucketObjectv2:BucketObjectv2"]
    assert len(objects) == 2 and min(objects) > sse > key > max(roles)


def test_controller_reads_and_cancels_commands_in_its_region_only(default_stack: StackRun):
    docs = _role_policies(default_stack, "twostage-test-controller-role")
    statements = [s for d in docs for s in d["Statement"]]
    commands = [s for s in statements if "ssm:CancelCommand" in s["Action"]]
    assert commands == [
        {
            "Sid": "ReadAndCancelCommandsInThisRegion",
            "Effect": "Allow",
            "Action": ["ssm:GetCommandInvocation", "ssm:CancelCommand"],
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestedRegion": "us-east-1"}},
        }
    ]
    actions = {a for s in statements for a in s["Action"]}
    assert not {"ssm:ListCommands", "ssm:ListCommandInvocations"} & actions


# --- config errors stop the plan -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"nodeCount": "0"}, "twostage:nodeCount"),
        ({"nodeCount": "four"}, "twostage:nodeCount"),
        ({"spot": "maybe"}, "twostage:spot"),
        ({"adminCidr": "0.0.0.0/0"}, "twostage:adminCidr"),
        ({"adminCidr": "::/0"}, "twostage:adminCidr"),
        ({"rootVolumeGb": "10"}, "twostage:rootVolumeGb"),
        ({"nodeCuont": "2"}, "twostage:nodeCuont"),
        ({"vpcId": "vpc-0abc1234"}, "twostage:subnetId"),
    ],
)
def test_invalid_config_fails_before_any_resource_naming_the_key(config, key):
    with pytest.raises(InfraError, match=key) as err:
        run_stack(config)
    assert str(err.value).startswith(key)


def test_invalid_config_plans_nothing(monkeypatch):
    seen = []
    real = RecordingMocks.new_resource
    monkeypatch.setattr(
        RecordingMocks, "new_resource", lambda self, a: seen.append(a.typ) or real(self, a)
    )
    with pytest.raises(InfraError):
        run_stack({"instanceType": "P4D LARGE"})
    assert [t for t in seen if t.startswith("aws:")] == []


# --- the file Pulumi runs ------------------------------------------------------------------------


def test_running_infra_main_as_pulumi_does_exports_the_contract_outputs(monkeypatch):
    import pulumi

    exported: dict[str, object] = {}
    monkeypatch.setattr(pulumi, "export", lambda k, v: exported.__setitem__(k, v))
    pulumi.runtime.set_mocks(RecordingMocks(), project="twostage", stack="test", preview=False)
    pulumi.runtime.set_all_config(
        {"aws:region": "us-east-1", **{f"twostage:{k}": v for k, v in PINNED.items()}}
    )

    @pulumi.runtime.test
    def _program():
        runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")
        return pulumi.Output.all(**exported)

    _program()
    assert set(exported) == CONTRACT_OUTPUTS


def test_the_launch_tasks_accept_the_stacks_outputs(default_stack: StackRun):
    """The contract between the two packages: what `pulumi stack output --json` prints."""
    from trainer.launch.outputs import StackOutputs

    o = StackOutputs.from_dict(json.loads(json.dumps(default_stack.outputs)), source="mock stack")
    assert o.group_name == "twostage-test-nodes"
    assert o.instance_types == ("p4d.24xlarge",) and o.controller_instance_type == "t3.small"
    assert o.run_prefix == f"s3://{FAKE_BUCKET}/runs"
    assert o.allow_internet_egress is False


def test_pulumi_up_leaves_the_desired_capacity_to_the_controller(monkeypatch):
    """After a scale to 0 a routine `pulumi up` must not bring idle nodes back (billing)."""
    import pulumi_aws as aws

    seen: list = []
    real = aws.autoscaling.Group

    def recording(resource_name, *args, opts=None, **kwargs):
        seen.append(opts)
        return real(resource_name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(aws.autoscaling, "Group", recording)
    run_stack({})
    (opts,) = seen
    assert opts.ignore_changes == ["desiredCapacity"]
    assert opts.depends_on  # the source bundle exists before any node boots
