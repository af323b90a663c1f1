"""Compute component: node IAM role, cluster placement group, launch template and the N nodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER, node_tags
from infra.bundle import BUNDLE_KEY
from infra.policies import (
    SSM_MANAGED_POLICY,
    assume_role_policy,
    bucket_access_policy,
    efa_interface_count,
    to_json,
)
from infra.userdata import NodeBootstrap, render_user_data


@dataclass(frozen=True)
class ComputeArgs:
    cluster_name: str
    node_count: int
    instance_type: str
    spot: bool
    spot_max_price: str | None
    root_volume_gb: int
    ami_id: str | None
    ami_parameter_name: str
    efa_interfaces: int | None = None
    key_name: str | None = None
    repo_url: str | None = None
    repo_ref: str = "main"
    source_bundle: Path | None = None
    """Zipped checkout to upload when ``repo_url`` is None."""


class Compute(pulumi.ComponentResource):
    """GPU nodes that can reach only their bucket and SSM."""

    instance_ids: pulumi.Output[list[str]]
    private_ips: pulumi.Output[list[str]]
    launch_template_id: pulumi.Output[str]
    role_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: ComputeArgs,
        *,
        subnet_id: pulumi.Input[str],
        security_group_id: pulumi.Input[str],
        availability_zone: pulumi.Input[str],
        bucket_name: pulumi.Input[str],
        bucket_arn: pulumi.Input[str],
        run_prefix: pulumi.Input[str],
        region: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Compute", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        cluster = args.cluster_name
        tags = {TAG_CLUSTER: cluster}

        # --- IAM: SSM managed-instance core + this bucket only.
        partition = aws.get_partition_output(opts=invoke).partition
        role = aws.iam.Role(
            f"{name}-node-role",
            assume_role_policy=to_json(assume_role_policy()),
            description=f"{cluster} GPU nodes: SSM + the run bucket only",
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm-core",
            role=role.name,
            policy_arn=partition.apply(lambda p: f"arn:{p}:iam::aws:policy/{SSM_MANAGED_POLICY}"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-bucket-access",
            role=role.id,
            policy=pulumi.Output.from_input(bucket_arn).apply(
                lambda arn: to_json(bucket_access_policy(arn))
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-node-profile", role=role.name, tags=tags, opts=child
        )

        # --- Placement: all nodes on the same low-latency network spine.
        placement = aws.ec2.PlacementGroup(
            f"{name}-placement", strategy="cluster", tags=tags, opts=child
        )

        # --- Image: the latest PyTorch DLAMI from its public SSM parameter, unless pinned.
        if args.ami_id is not None:
            ami = pulumi.Output.from_input(args.ami_id)
        else:
            ami = aws.ssm.get_parameter_output(name=args.ami_parameter_name, opts=invoke).value
        image = aws.ec2.get_ami_output(
            filters=[{"name": "image-id", "values": [ami]}], most_recent=True, opts=invoke
        )

        efa = efa_interface_count(args.instance_type, args.efa_interfaces)
        interfaces = [
            {
                "device_index": 0 if card == 0 else 1,
                "network_card_index": card,
                "interface_type": "efa",
                "subnet_id": subnet_id,
                "security_groups": [security_group_id],
                "delete_on_termination": True,
            }
            for card in range(efa)
        ] or [
            {
                "device_index": 0,
                "subnet_id": subnet_id,
                "security_groups": [security_group_id],
                "delete_on_termination": True,
            }
        ]
        market = None
        if args.spot:
            spot_options = {
                "spot_instance_type": "one-time",
                "instance_interruption_behavior": "terminate",
            }
            if args.spot_max_price is not None:
                spot_options["max_price"] = args.spot_max_price
            market = {"market_type": "spot", "spot_options": spot_options}

        template = aws.ec2.LaunchTemplate(
            f"{name}-node-template",
            description=f"{cluster} GPU node",
            image_id=ami,
            instance_type=args.instance_type,
            iam_instance_profile={"arn": profile.arn},
            key_name=args.key_name,
            ebs_optimized="true",
            instance_initiated_shutdown_behavior="terminate",
            instance_market_options=market,
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                # 2 hops so a container on the node can still reach IMDSv2.
                "http_put_response_hop_limit": 2,
                "instance_metadata_tags": "enabled",
            },
            block_device_mappings=[
                {
                    "device_name": image.root_device_name,
                    "ebs": {
                        "volume_size": args.root_volume_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            network_interfaces=interfaces,
            placement={"group_name": placement.name, "availability_zone": availability_zone},
            tag_specifications=[
                {"resource_type": "volume", "tags": tags},
                {"resource_type": "network-interface", "tags": tags},
            ],
            tags=tags,
            opts=child,
        )

        # --- Source for the nodes: a git ref, or this checkout uploaded to the bucket.
        source_uri = None
        depends: list[pulumi.Resource] = []
        if args.repo_url is None:
            if args.source_bundle is None:
                raise ValueError("source_bundle is required when repo_url is not set")
            bundle = aws.s3.BucketObjectv2(
                f"{name}-source-bundle",
                bucket=bucket_name,
                key=BUNDLE_KEY,
                source=pulumi.FileAsset(str(args.source_bundle)),
                content_type="application/zip",
                tags=tags,
                opts=child,
            )
            source_uri = pulumi.Output.from_input(bucket_name).apply(
                lambda b: f"s3://{b}/{BUNDLE_KEY}"
            )
            depends.append(bundle)

        instances = []
        for index in range(args.node_count):
            user_data = pulumi.Output.all(bucket_name, run_prefix, region, source_uri).apply(
                lambda v, i=index: render_user_data(
                    NodeBootstrap(
                        cluster=cluster,
                        node_index=i,
                        node_count=args.node_count,
                        bucket=v[0],
                        run_prefix=v[1],
                        region=v[2],
                        repo_url=args.repo_url,
                        repo_ref=args.repo_ref,
                        source_uri=v[3],
                    )
                )
            )
            instances.append(
                aws.ec2.Instance(
                    f"{name}-node-{index}",
                    launch_template={
                        "id": template.id,
                        "version": template.latest_version.apply(str),
                    },
                    user_data=user_data,
                    tags=node_tags(cluster, index),
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        depends_on=depends,
                        # cloud-init runs user data on first boot only; rewriting it on a running
                        # spot node would need a stop, which one-time spot cannot do.
                        ignore_changes=["userData"],
                    ),
                )
            )

        self.instance_ids = pulumi.Output.all(*[inst.id for inst in instances])
        self.private_ips = pulumi.Output.all(*[inst.private_ip for inst in instances])
        self.launch_template_id = template.id
        self.role_name = role.name
        self.register_outputs(
            {
                "instance_ids": self.instance_ids,
                "private_ips": self.private_ips,
                "launch_template_id": self.launch_template_id,
                "role_name": self.role_name,
            }
        )
