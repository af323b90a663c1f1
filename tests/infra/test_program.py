"""The real program under Pulumi mocks: what `pulumi up` would create, and its security properties."""

from __future__ import annotations

import ipaddress
import json
import runpy
from pathlib import Path

import pytest
from infra_mocks import FAKE_AMI, FAKE_BUCKET, RecordingMocks, StackRun, run_stack

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
    "instance_ids",
    "private_ips",
    "head_instance_id",
    "head_private_ip",
    "instance_type",
    "spot",
    "launch_template_id",
    "security_group_id",
    "subnet_id",
}

LT = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
WORLD = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}


@pytest.fixture(scope="module")
def four_on_demand() -> StackRun:
    return run_stack({"nodeCount": 4, "spot": "false"})


# --- the default plan: only aws:region set -----------------------------------------------------


def test_default_stack_is_one_spot_p4d_node(default_stack: StackRun):
    out = default_stack.outputs
    assert set(out) == CONTRACT_OUTPUTS
    assert out["node_count"] == 1 and len(out["instance_ids"]) == 1
    assert out["instance_type"] == "p4d.24xlarge" and out["spot"] is True
    assert out["region"] == "us-east-1"
    assert out["bucket"] == FAKE_BUCKET
    assert out["run_prefix"] == f"s3://{FAKE_BUCKET}/runs"
    assert out["cluster_name"] == "twostage-test"
    assert out["head_instance_id"] == out["instance_ids"][0]
    assert out["head_private_ip"] == out["private_ips"][0]
    # No AZ configured: the first (sorted) AZ that offers p4d.24xlarge.
    assert out["availability_zone"] == "us-east-1a"
    lt = default_stack.one(LT)
    assert lt.inputs["instanceType"] == "p4d.24xlarge"
    assert out["launch_template_id"].endswith(lt.name)


def test_default_ami_comes_from_the_dlami_ssm_parameter(default_stack: StackRun):
    names = [a["name"] for t, a in default_stack.calls if t == "aws:ssm/getParameter:getParameter"]
    assert names == [
        "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04/latest/ami-id"
    ]
    assert default_stack.one(LT).inputs["imageId"] == FAKE_AMI


def test_pinned_ami_skips_the_lookup():
    run = run_stack({"amiId": "ami-0fedcba9876543210"})
    assert run.one(LT).inputs["imageId"] == "ami-0fedcba9876543210"
    assert not [t for t, _ in run.calls if t == "aws:ssm/getParameter:getParameter"]


def test_spot_options(default_stack: StackRun):
    market = default_stack.one(LT).inputs["instanceMarketOptions"]
    assert market["marketType"] == "spot"
    assert market["spotOptions"]["spotInstanceType"] == "one-time"
    assert market["spotOptions"]["instanceInterruptionBehavior"] == "terminate"
    assert "maxPrice" not in market["spotOptions"]
    priced = run_stack({"spotMaxPrice": "12.5"})
    assert priced.one(LT).inputs["instanceMarketOptions"]["spotOptions"]["maxPrice"] == "12.5"


def test_root_volume_is_encrypted_gp3_of_configured_size(default_stack: StackRun):
    (mapping,) = default_stack.one(LT).inputs["blockDeviceMappings"]
    assert mapping["deviceName"] == "/dev/sda1"  # the AMI's root device, so it resizes root
    assert mapping["ebs"]["volumeSize"] == 1000
    assert mapping["ebs"]["volumeType"] == "gp3"
    assert mapping["ebs"]["encrypted"] == "true"
    small = run_stack({"rootVolumeGb": 200})
    assert small.one(LT).inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 200


def test_imdsv2_required_and_shutdown_terminates(default_stack: StackRun):
    lt = default_stack.one(LT).inputs
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["metadataOptions"]["httpEndpoint"] == "enabled"
    assert lt["instanceInitiatedShutdownBehavior"] == "terminate"


def test_nodes_share_a_cluster_placement_group(default_stack: StackRun):
    group = default_stack.one("aws:ec2/placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster"
    placement = default_stack.one(LT).inputs["placement"]
    assert placement["groupName"] == group.name
    assert placement["availabilityZone"] == default_stack.outputs["availability_zone"]


def test_p4d_gets_four_efa_interfaces_in_the_node_subnet(default_stack: StackRun):
    nics = default_stack.one(LT).inputs["networkInterfaces"]
    assert [n["interfaceType"] for n in nics] == ["efa"] * 4
    assert [n["networkCardIndex"] for n in nics] == [0, 1, 2, 3]
    assert [n["deviceIndex"] for n in nics] == [0, 1, 1, 1]
    sg_id = default_stack.outputs["security_group_id"]
    for nic in nics:
        assert nic["subnetId"] == default_stack.outputs["subnet_id"]
        assert nic["securityGroups"] == [sg_id]
        assert "associatePublicIpAddress" not in nic


def test_instance_type_without_efa_gets_one_plain_interface():
    run = run_stack({"instanceType": "g5.12xlarge"})
    (nic,) = run.one(LT).inputs["networkInterfaces"]
    assert "interfaceType" not in nic
    assert run.one(LT).inputs["instanceType"] == "g5.12xlarge"


# --- N nodes, on-demand ----------------------------------------------------------------------


def test_four_nodes_have_indices_0_to_3_and_matching_outputs(four_on_demand: StackRun):
    nodes = four_on_demand.of_type(INSTANCE)
    assert len(nodes) == 4
    indices = sorted(int(n.inputs["tags"]["twostage:node-index"]) for n in nodes)
    assert indices == [0, 1, 2, 3]
    for node in nodes:
        tags = node.inputs["tags"]
        i = tags["twostage:node-index"]
        assert tags["twostage:cluster"] == "twostage-test"
        assert tags["Name"] == f"twostage-test-node-{i}"
        assert f"TWOSTAGE_NODE_INDEX={i}\n" in node.inputs["userData"]
        assert "TWOSTAGE_NODE_COUNT=4\n" in node.inputs["userData"]
        assert node.inputs["launchTemplate"]["id"] == four_on_demand.outputs["launch_template_id"]
    out = four_on_demand.outputs
    assert out["node_count"] == 4
    assert out["instance_ids"] == [f"instance-twostage-test-node-{i}" for i in range(4)]
    assert len(set(out["private_ips"])) == 4
    assert out["head_instance_id"] == "instance-twostage-test-node-0"
    head = next(n for n in nodes if n.inputs["tags"]["twostage:node-index"] == "0")
    assert out["head_private_ip"] == out["private_ips"][0] != out["private_ips"][3]
    assert "TWOSTAGE_NODE_INDEX=0\n" in head.inputs["userData"]


def test_on_demand_has_no_spot_market(four_on_demand: StackRun):
    assert four_on_demand.outputs["spot"] is False
    assert "instanceMarketOptions" not in four_on_demand.one(LT).inputs


def test_four_spot_nodes():
    run = run_stack({"nodeCount": 4})
    assert len(run.of_type(INSTANCE)) == 4
    assert run.one(LT).inputs["instanceMarketOptions"]["marketType"] == "spot"


def test_user_data_points_at_this_stacks_bucket(default_stack: StackRun):
    user_data = default_stack.one(INSTANCE).inputs["userData"]
    assert f"TWOSTAGE_BUCKET={FAKE_BUCKET}\n" in user_data
    assert f"TWOSTAGE_RUN_PREFIX=s3://{FAKE_BUCKET}/runs\n" in user_data
    assert "AWS_DEFAULT_REGION=us-east-1\n" in user_data
    # No repoUrl: this checkout is uploaded and the node unpacks it from the bucket.
    bundle = default_stack.one("aws:s3/bucketObjectv2:BucketObjectv2")
    assert bundle.inputs["key"] == "bootstrap/twostage-src.zip"
    assert "bootstrap/twostage-src.zip" in user_data


def test_repo_url_clones_instead_of_uploading():
    run = run_stack({"repoUrl": "https://github.com/example/twostage.git", "repoRef": "v1.2"})
    assert not run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    user_data = run.one(INSTANCE).inputs["userData"]
    assert "https://github.com/example/twostage.git" in user_data
    assert "fetch --depth 1 origin v1.2" in user_data


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
    (rule,) = default_stack.of_type(INGRESS)
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


def test_egress_to_the_world_is_https_only(default_stack: StackRun):
    world = [r for r in default_stack.of_type(EGRESS) if _world_open(r)]
    assert world, "nodes need HTTPS out for SSM and the install"
    for rule in world:
        assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == (
            "tcp",
            443,
            443,
        )
    assert _inline_rules(default_stack, "egress") == []


def test_created_network_keeps_nodes_private_and_s3_on_the_gateway_endpoint(default_stack):
    subnets = default_stack.of_type("aws:ec2/subnet:Subnet")
    assert all(s.inputs.get("mapPublicIpOnLaunch") is False for s in subnets)
    assert all(s.inputs["availabilityZone"] == "us-east-1a" for s in subnets)
    endpoint = default_stack.one("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert endpoint.inputs["serviceName"] == "com.amazonaws.us-east-1.s3"
    assert endpoint.inputs["vpcEndpointType"] == "Gateway"
    private_rt = next(
        r for r in default_stack.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name
    )
    assert endpoint.inputs["routeTableIds"] == [f"routetable-{private_rt.name}"]
    assert private_rt.inputs["routes"][0]["natGatewayId"].startswith("natgateway-")
    default_sg = default_stack.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert not default_sg.inputs.get("ingress") and not default_sg.inputs.get("egress")


def test_existing_network_creates_only_the_security_group():
    run = run_stack({"vpcId": "vpc-0abc1234", "subnetId": "subnet-0abc1234"})
    assert not run.of_type("aws:ec2/vpc:Vpc") and not run.of_type("aws:ec2/natGateway:NatGateway")
    assert run.one(SG).inputs["vpcId"] == "vpc-0abc1234"
    assert run.outputs["subnet_id"] == "subnet-0abc1234"
    assert run.outputs["availability_zone"] == "us-east-1c"
    assert run.one(LT).inputs["networkInterfaces"][0]["subnetId"] == "subnet-0abc1234"


def test_configured_availability_zone_is_used():
    run = run_stack({"availabilityZone": "us-east-1f"})
    assert run.outputs["availability_zone"] == "us-east-1f"
    assert not [t for t, _ in run.calls if "getInstanceTypeOfferings" in t]


# --- storage -----------------------------------------------------------------------------------


def test_bucket_encrypted_versioned_private(default_stack: StackRun):
    sse = default_stack.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    algo = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"]
    assert algo in ("AES256", "aws:kms")
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


def test_node_role_reaches_only_this_bucket_and_ssm(default_stack: StackRun):
    role_policies = default_stack.of_type("aws:iam/rolePolicy:RolePolicy")
    assert len(role_policies) == 1
    bucket_arn = f"arn:aws:s3:::{FAKE_BUCKET}"
    for rp in role_policies:
        for stmt in json.loads(rp.inputs["policy"])["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            resources = (
                stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
            )
            assert stmt["Effect"] == "Allow"
            assert all(a.startswith("s3:") and "*" not in a for a in actions)
            assert "*" not in resources
            assert set(resources) <= {bucket_arn, f"{bucket_arn}/*"}
    (attachment,) = default_stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert attachment.inputs["policyArn"] == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    trust = json.loads(default_stack.one("aws:iam/role:Role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = default_stack.one("aws:iam/instanceProfile:InstanceProfile")
    assert default_stack.one(LT).inputs["iamInstanceProfile"]["arn"].endswith(profile.name)


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
    pulumi.runtime.set_all_config({"aws:region": "us-east-1"})

    @pulumi.runtime.test
    def _program():
        runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")
        return pulumi.Output.all(**exported)

    _program()
    assert set(exported) == CONTRACT_OUTPUTS
