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
from infra.config import load_config  # noqa: E402
from infra.network import Network, NetworkArgs  # noqa: E402
from infra.storage import Storage, StorageArgs  # noqa: E402


def main() -> dict[str, pulumi.Input]:
    """Plan the whole stack; returns the stack outputs (also exported when run by Pulumi)."""
    cfg = load_config()  # raises InfraError naming the key before any resource is planned
    region = aws.get_region_output().region
    name = cfg.cluster_name

    network = Network(
        name,
        NetworkArgs(
            cluster_name=name,
            instance_type=cfg.instance_type,
            availability_zone=cfg.availability_zone,
            vpc_id=cfg.vpc_id,
            subnet_id=cfg.subnet_id,
            admin_cidr=cfg.admin_cidr,
        ),
        region=region,
    )
    storage = Storage(
        name,
        StorageArgs(
            cluster_name=name,
            bucket_prefix=cfg.bucket_prefix,
            noncurrent_retention_days=cfg.checkpoint_retention_days,
            force_destroy=cfg.bucket_force_destroy,
        ),
    )
    compute = Compute(
        name,
        ComputeArgs(
            cluster_name=name,
            node_count=cfg.node_count,
            instance_type=cfg.instance_type,
            spot=cfg.spot,
            spot_max_price=cfg.spot_max_price,
            root_volume_gb=cfg.root_volume_gb,
            ami_id=cfg.ami_id,
            ami_parameter_name=cfg.ami_parameter_name,
            efa_interfaces=cfg.efa_interfaces,
            key_name=cfg.key_name,
            repo_url=cfg.repo_url,
            repo_ref=cfg.repo_ref,
            source_bundle=None if cfg.repo_url else build_bundle(repo_root())[0],
        ),
        subnet_id=network.subnet_id,
        security_group_id=network.security_group_id,
        availability_zone=network.availability_zone,
        bucket_name=storage.bucket_name,
        bucket_arn=storage.bucket_arn,
        run_prefix=storage.run_prefix,
        region=region,
    )

    return {
        "region": region,
        "availability_zone": network.availability_zone,
        "bucket": storage.bucket_name,
        "run_prefix": storage.run_prefix,
        "cluster_name": name,
        "node_count": cfg.node_count,
        "instance_ids": compute.instance_ids,
        "private_ips": compute.private_ips,
        "head_instance_id": compute.instance_ids.apply(lambda ids: ids[0]),
        "head_private_ip": compute.private_ips.apply(lambda ips: ips[0]),
        "instance_type": cfg.instance_type,
        "spot": cfg.spot,
        "launch_template_id": compute.launch_template_id,
        "security_group_id": network.security_group_id,
        "subnet_id": network.subnet_id,
    }


if __name__ == "__main__":
    for _key, _value in main().items():
        pulumi.export(_key, _value)
