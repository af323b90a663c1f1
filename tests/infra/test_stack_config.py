"""Stack config: defaults, validation naming the key, and Pulumi.yaml documenting every key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from infra.config import DEFAULT_AMI_TYPE, KEYS, StackConfig, key_of, parse_config
from infra.errors import InfraError

ROOT = Path(__file__).resolve().parents[2]


def test_empty_config_is_a_single_node_spot_p4d_cluster():
    cfg = parse_config({}, stack="dev")
    assert cfg.node_count == 1
    assert cfg.instance_type == "p4d.24xlarge"
    assert cfg.spot is True and cfg.spot_max_price is None
    assert cfg.root_volume_gb == 1000
    assert cfg.admin_cidr is None
    assert cfg.cluster_name == "twostage-dev"
    assert cfg.ami_parameter_name == (
        f"/aws/service/deeplearning/ami/x86_64/{DEFAULT_AMI_TYPE}/latest/ami-id"
    )
    assert "pytorch" in DEFAULT_AMI_TYPE


def test_values_are_parsed_into_types():
    cfg = parse_config(
        {
            "nodeCount": "4",
            "spot": "false",
            "rootVolumeGb": "2000",
            "adminCidr": "203.0.113.7",
            "amiSsmParameter": "/my/ami",
            "efaInterfaces": "2",
            "bucketForceDestroy": "true",
        },
        stack="prod",
    )
    assert (cfg.node_count, cfg.spot, cfg.root_volume_gb) == (4, False, 2000)
    assert cfg.admin_cidr == "203.0.113.7/32"
    assert cfg.ami_parameter_name == "/my/ami"
    assert cfg.efa_interfaces == 2 and cfg.bucket_force_destroy is True


def test_empty_strings_mean_unset():
    # Pulumi.yaml declares "" as the default of every optional key.
    cfg = parse_config(
        {"amiId": "", "adminCidr": "", "efaInterfaces": "", "clusterName": ""}, stack="s"
    )
    assert cfg.ami_id is None and cfg.admin_cidr is None and cfg.efa_interfaces is None
    assert cfg.cluster_name == "twostage-s"


def test_stack_names_become_valid_cluster_names():
    assert parse_config({}, stack="My_Stack.01").cluster_name == "twostage-my-stack-01"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"nodeCount": "65"}, "nodeCount"),
        ({"nodeCount": "-1"}, "nodeCount"),
        ({"instanceType": "p4d"}, "instanceType"),
        ({"spot": "yes please"}, "spot"),
        ({"spotMaxPrice": "cheap"}, "spotMaxPrice"),
        ({"spotMaxPrice": "0"}, "spotMaxPrice"),
        ({"spot": "false", "spotMaxPrice": "10"}, "spotMaxPrice"),
        ({"rootVolumeGb": "99999"}, "rootVolumeGb"),
        ({"amiId": "ubuntu"}, "amiId"),
        ({"availabilityZone": "east"}, "availabilityZone"),
        ({"subnetId": "subnet-0abc1234"}, "vpcId"),
        ({"vpcId": "vpc-0abc1234", "subnetId": "sn-1"}, "subnetId"),
        ({"adminCidr": "0.0.0.0/0"}, "adminCidr"),
        ({"adminCidr": "::/0"}, "adminCidr"),
        ({"adminCidr": "0.0.0.0/1"}, "adminCidr"),
        ({"adminCidr": "not-a-cidr"}, "adminCidr"),
        ({"keyName": "me"}, "keyName"),
        ({"bucketPrefix": "Twostage_"}, "bucketPrefix"),
        ({"bucketPrefix": "x" * 38}, "bucketPrefix"),
        ({"checkpointRetentionDays": "0"}, "checkpointRetentionDays"),
        ({"repoUrl": "git@github.com:me/twostage.git"}, "repoUrl"),
        ({"repoUrl": "https://example.com/x.git; rm -rf /"}, "repoUrl"),
        ({"repoRef": "-upload-pack=evil"}, "repoRef"),
        ({"clusterName": "Big Cluster"}, "clusterName"),
        ({"efaInterfaces": "99"}, "efaInterfaces"),
        ({"nodecount": "2"}, "nodecount"),
        ({"efaInterfaces": "8"}, "efaInterfaces"),
        ({"instanceTypes": "p4d.24xlarge,g5.12xlarge"}, "instanceTypes"),
        ({"instanceType": "p5.48xlarge", "instanceTypes": "p4d.24xlarge"}, "instanceType"),
        ({"controllerInstanceType": "small"}, "controllerInstanceType"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(InfraError) as err:
        parse_config(values, stack="dev")
    assert str(err.value).startswith(f"twostage:{key}:")


def test_allowed_instance_types():
    cfg = parse_config({"instanceTypes": "p5.48xlarge, p4d.24xlarge,p5.48xlarge"}, stack="dev")
    assert cfg.allowed_instance_types == ("p5.48xlarge", "p4d.24xlarge")
    assert cfg.instance_type == "p5.48xlarge"
    assert parse_config({}, stack="dev").allowed_instance_types == ("p4d.24xlarge",)


def test_the_ami_must_be_pinned_for_a_plan():
    from infra.config import require_pinned_ami

    assert require_pinned_ami(parse_config({"amiId": "ami-0123456789abcdef0"}, stack="d")) == (
        "ami-0123456789abcdef0"
    )
    with pytest.raises(InfraError, match="^twostage:amiId: no AMI pinned.*infra.pin_ami"):
        require_pinned_ami(parse_config({}, stack="d"))


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(InfraError, match="did you mean twostage:nodeCount"):
        parse_config({"nodeCuont": "2"}, stack="dev")


def test_world_open_ssh_is_refused_with_a_reason():
    with pytest.raises(InfraError, match="whole internet"):
        parse_config({"adminCidr": "0.0.0.0/0"}, stack="dev")


def _project_config() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_pulumi_yaml_runs_this_program():
    project = _project_config()
    assert project["name"] == "twostage"
    assert project["runtime"]["name"] == "python"
    assert project["main"].rstrip("/") == "infra"
    assert (ROOT / project["main"] / "__main__.py").is_file()


def test_pulumi_yaml_documents_every_key_with_the_real_default():
    documented = _project_config()["config"]
    assert list(documented) == list(KEYS)
    defaults = {key_of(f.name): f.default for f in dataclasses.fields(StackConfig)}
    for key, spec in documented.items():
        assert spec.get("description"), key
        assert spec["type"] in ("string", "integer", "boolean"), key
        default = defaults[key]
        expected = "" if default in (None, dataclasses.MISSING, ()) else default
        assert spec["default"] == expected, key
    # The declared defaults, fed back as the engine would, give the default config.
    as_engine = {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in ((k, s["default"]) for k, s in documented.items())
    }
    assert parse_config(as_engine, stack="dev") == parse_config({}, stack="dev")


def test_example_stack_file_is_valid():
    example = yaml.safe_load((ROOT / "Pulumi.example.yaml").read_text())["config"]
    assert "aws:region" in example
    ours = {k.split(":", 1)[1]: v for k, v in example.items() if k.startswith("twostage:")}
    cfg = parse_config(ours, stack="dev")
    assert cfg.node_count == 2 and cfg.spot is True
