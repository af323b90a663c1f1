"""The Pulumi program (``main: infra/``): read config, wire the components, export the outputs.

Pulumi runs this file with ``infra/`` as the working directory; the repository root is put on
``sys.path`` so the absolute ``infra.*`` imports (and ``artifacts``) resolve without an install.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402
import pulumi_aws as aws  # noqa: E402

from infra.bundle import build_bundle, repo_root  # noqa: E402
from infra.compute import Compute, ComputeArgs  # noqa: E402
from infra.config import load_config, require_pinned_ami  # noqa: E402
from infra.controller import Controller, ControllerArgs  # noqa: E402
from infra.identity import Identity  # noqa: E402
from infra.network import Network, NetworkArgs  # noqa: E402
from infra.storage import Storage, StorageArgs  # noqa: E402
from infra.wheelhouse import pack_wheelhouse  # noqa: E402


def main() -> dict[str, pulumi.Input]:
    """Plan the whole stack; returns the stack outputs (also exported when run by Pulumi)."""
    cfg = load_config()  # raises InfraError naming the key before any resource is planned
    ami = require_pinned_ami(cfg)
    region = aws.get_region_output().region
    name = cfg.cluster_name
    bundle, digest = (None, None) if cfg.repo_url else build_bundle(
        repo_root(), allow_dirty=cfg.allow_dirty
    )
    # Refuses (naming `invoke wheelhouse`) before any resource when it was never built.
    wheels, wheels_digest = pack_wheelhouse(
        Path(cfg.wheelhouse) if cfg.wheelhouse else repo_root() / "build" / "wheelhouse"
    )
    if cfg.allow_internet_egress:
        pulumi.log.warn(
            "twostage:allowInternetEgress is true: nodes and the controller get a NAT gateway and "
            "HTTPS to anywhere; a compromised dependency running as root can send data out"
        )

    network = Network(
        name,
        NetworkArgs(
            cluster_name=name,
            instance_type=cfg.instance_type,
            availability_zone=cfg.availability_zone,
            vpc_id=cfg.vpc_id,
            subnet_id=cfg.subnet_id,
            admin_cidr=cfg.admin_cidr,
            allow_internet_egress=cfg.allow_internet_egress,
        ),
        region=region,
    )
    # The roles first: the bucket's key policy names them (KMS refuses unknown principals).
    identity = Identity(name, name)
    storage = Storage(
        name,
        StorageArgs(
            cluster_name=name,
            bucket_prefix=cfg.bucket_prefix,
            noncurrent_retention_days=cfg.checkpoint_retention_days,
            force_destroy=cfg.bucket_force_destroy,
            owner_principal_arn=cfg.owner_principal_arn,
        ),
        region=region,
        cluster_role_arns=[identity.node_role.arn, identity.controller_role.arn],
        s3_endpoint_id=network.s3_endpoint_id,
    )
    compute = Compute(
        name,
        ComputeArgs(
            cluster_name=name,
            node_count=cfg.node_count,
            instance_types=cfg.allowed_instance_types,
            spot=cfg.spot,
            spot_max_price=cfg.spot_max_price,
            root_volume_gb=cfg.root_volume_gb,
            ami_id=ami,
            efa_interfaces=cfg.efa_interfaces,
            key_name=cfg.key_name,
            repo_url=cfg.repo_url,
            repo_ref=cfg.repo_ref,
            source_bundle=bundle,
            source_sha256=digest,
            wheelhouse=wheels,
            wheelhouse_sha256=wheels_digest,
        ),
        role=identity.node_role,
        subnet_id=network.subnet_id,
        security_group_id=network.security_group_id,
        bucket_name=storage.bucket_name,
        bucket_arn=storage.bucket_arn,
        run_prefix=storage.run_prefix,
        region=region,
    )
    controller = Controller(
        name,
        ControllerArgs(
            cluster_name=name,
            instance_type=cfg.controller_instance_type,
            ami_id=ami,
            group_name=compute.group_name_static,
            node_count=cfg.node_count,
            node_instance_types=cfg.allowed_instance_types,
            spot=cfg.spot,
            repo_url=cfg.repo_url,
            repo_ref=cfg.repo_ref,
            source_sha256=digest,
            wheelhouse_sha256=wheels_digest,
        ),
        role=identity.controller_role,
        subnet_id=network.subnet_id,
        security_group_id=network.controller_security_group_id,
        bucket_name=storage.bucket_name,
        bucket_arn=storage.bucket_arn,
        run_prefix=storage.run_prefix,
        region=region,
        group_arn=compute.group_arn,
        source_uri=compute.source_uri,
        wheelhouse_uri=compute.wheelhouse_uri,
        availability_zone=network.availability_zone,
        depends_on=[compute],
    )

    return {
        "region": region,
        "availability_zone": network.availability_zone,
        "bucket": storage.bucket_name,
        "run_prefix": storage.run_prefix,
        "cluster_name": name,
        "node_count": cfg.node_count,
        "instance_type": cfg.instance_type,
        "instance_types": list(cfg.allowed_instance_types),
        "spot": cfg.spot,
        "allow_internet_egress": cfg.allow_internet_egress,
        "ami_id": ami,
        "autoscaling_group_name": compute.group_name,
        "launch_template_id": compute.launch_template_id,
        "controller_instance_id": controller.instance_id,
        "controller_instance_type": cfg.controller_instance_type,
        "security_group_id": network.security_group_id,
        "subnet_id": network.subnet_id,
    }


if __name__ == "__main__":
    for _key, _value in main().items():
        pulumi.export(_key, _value)
