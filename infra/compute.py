"""Compute component: the node role's scoped policies, cluster placement group, launch template and
Auto Scaling group.

The nodes belong to one EC2 Auto Scaling group that Pulumi owns: AWS launches them (one request
for the whole placement group), replaces a lost spot node, and removes every instance when the
desired capacity goes to 0 or the group is destroyed. Nothing is ever launched outside the Pulumi
state. Desired capacity starts at ``nodeCount``; afterwards the controller owns it (scale to 0 at
the end of a run, back to N on submit), so ``pulumi up`` ignores its drift.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from artifacts.node import ROLE_NODE, TAG_CLUSTER, group_name, node_tags
from infra.bundle import BUNDLE_KEY
from infra.efa import efa_interfaces_for
from infra.policies import (
    bucket_access_policy,
    node_self_terminate_policy,
    to_json,
)
from infra.userdata import Bootstrap, render_user_data
from infra.wheelhouse import WHEELHOUSE_KEY

SPOT_ALLOCATION = "price-capacity-optimized"


@dataclass(frozen=True)
class ComputeArgs:
    cluster_name: str
    node_count: int
    instance_types: tuple[str, ...]
    """Allowed node types; the first is the launch template's own."""
    spot: bool
    spot_max_price: str | None
    root_volume_gb: int
    ami_id: str
    efa_interfaces: int | None = None
    key_name: str | None = None
    repo_url: str | None = None
    repo_ref: str | None = None
    source_bundle: Path | None = None
    """Zipped checkout to upload when ``repo_url`` is None."""
    source_sha256: str | None = None
    """Its SHA-256, checked by every machine before it unpacks the bundle."""
    wheelhouse: Path | None = None
    """The packed wheelhouse (:func:`infra.wheelhouse.pack_wheelhouse`), uploaded beside it."""
    wheelhouse_sha256: str = ""
    """Its SHA-256, checked by every machine before it installs anything."""


def network_interfaces(
    count: int, security_group_id: pulumi.Input[str]
) -> list[aws.ec2.LaunchTemplateNetworkInterfaceArgs]:
    """EFA interfaces (one per network card; device 0 on card 0), or one plain ENI.

    No subnet here: the group launches into its own subnets (``vpc_zone_identifiers``), and a
    template that names one as well is a second, conflicting source of truth.
    """
    common = {
        "security_groups": [security_group_id],
        "delete_on_termination": "true",  # the SDK type is a string
    }
    if count == 0:
        return [aws.ec2.LaunchTemplateNetworkInterfaceArgs(device_index=0, **common)]
    return [
        aws.ec2.LaunchTemplateNetworkInterfaceArgs(
            device_index=0 if card == 0 else 1,
            network_card_index=card,
            interface_type="efa",
            **common,
        )
        for card in range(count)
    ]


class Compute(pulumi.ComponentResource):
    """GPU nodes in an Auto Scaling group that can reach only their bucket and SSM."""

    group_name: pulumi.Output[str]
    group_name_static: str
    """The same name as a plain string (it is fixed by the cluster name)."""
    group_arn: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]
    role_name: pulumi.Output[str]
    source_uri: pulumi.Output[str | None]
    wheelhouse_uri: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: ComputeArgs,
        *,
        role: aws.iam.Role,
        subnet_id: pulumi.Input[str],
        security_group_id: pulumi.Input[str],
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
        asg_name = group_name(cluster)

        # --- IAM: the role (infra.identity: trust + the SSM agent's calls) gets this bucket
        # (writes under runs/ only) and leaving the group. The bucket's key is granted by the key
        # policy itself (infra.egress.bucket_key_policy), which names this role.
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

        # --- Image: the AMI pinned in the stack config (never a moving `latest`).
        image = aws.ec2.get_ami_output(
            filters=[{"name": "image-id", "values": [args.ami_id]}],
            most_recent=True,
            opts=invoke,
        )

        # --- Source for the machines: a git ref, or this checkout uploaded to the bucket.
        source_uri: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        depends: list[pulumi.Resource] = []
        if args.repo_url is None:
            if args.source_bundle is None or args.source_sha256 is None:
                raise ValueError("source_bundle and source_sha256 are required without repo_url")
            bundle = aws.s3.BucketObjectv2(
                f"{name}-source-bundle",
                bucket=bucket_name,
                key=BUNDLE_KEY,
                source=pulumi.FileAsset(str(args.source_bundle)),
                content_type="application/zip",
                checksum_algorithm="SHA256",
                tags=tags,
                opts=child,
            )
            source_uri = pulumi.Output.from_input(bucket_name).apply(
                lambda b: f"s3://{b}/{BUNDLE_KEY}"
            )
            depends.append(bundle)
        self.source_uri = source_uri
        if args.wheelhouse is None:
            raise ValueError("the packed wheelhouse is required")
        depends.append(
            aws.s3.BucketObjectv2(
                f"{name}-wheelhouse",
                bucket=bucket_name,
                key=WHEELHOUSE_KEY,
                source=pulumi.FileAsset(str(args.wheelhouse)),
                content_type="application/x-tar",
                checksum_algorithm="SHA256",
                tags=tags,
                opts=child,
            )
        )
        self.wheelhouse_uri = pulumi.Output.from_input(bucket_name).apply(
            lambda b: f"s3://{b}/{WHEELHOUSE_KEY}"
        )

        user_data = pulumi.Output.all(bucket_name, run_prefix, region, source_uri).apply(
            lambda v: base64.b64encode(
                render_user_data(
                    Bootstrap(
                        role=ROLE_NODE,
                        cluster=cluster,
                        bucket=v[0],
                        run_prefix=v[1],
                        region=v[2],
                        group_name=asg_name,
                        repo_url=args.repo_url,
                        repo_ref=args.repo_ref,
                        source_uri=v[3],
                        source_sha256=args.source_sha256,
                        wheelhouse_uri=f"s3://{v[0]}/{WHEELHOUSE_KEY}",
                        wheelhouse_sha256=args.wheelhouse_sha256,
                    )
                ).encode()
            ).decode()
        )

        efa = efa_interfaces_for(args.instance_types, args.efa_interfaces)
        template = aws.ec2.LaunchTemplate(
            f"{name}-node-template",
            description=f"{cluster} GPU node",
            image_id=args.ami_id,
            instance_type=args.instance_types[0],
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            key_name=args.key_name,
            ebs_optimized="true",
            # A powered-off node must stop billing; inside the group it is also replaced, which
            # is why a node that is done leaves the group through the API instead.
            instance_initiated_shutdown_behavior="terminate",
            user_data=user_data,
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # 1 hop: a container on the node cannot reach the role's credentials.
                http_put_response_hop_limit=1,
                instance_metadata_tags="enabled",
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=image.root_device_name,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.root_volume_gb,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            network_interfaces=network_interfaces(efa, security_group_id),
            # Subnet (hence AZ) and placement group come from the group, in one place.
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=tags),
                aws.ec2.LaunchTemplateTagSpecificationArgs(
                    resource_type="network-interface", tags=tags
                ),
            ],
            tags=tags,
            opts=child,
        )

        # Spot or on-demand, one or several allowed types: always a mixed instances policy, so
        # the launch template carries no market options (the group refuses those with a policy).
        distribution = aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
            on_demand_base_capacity=0,
            on_demand_percentage_above_base_capacity=0 if args.spot else 100,
            on_demand_allocation_strategy="prioritized",
            spot_allocation_strategy=SPOT_ALLOCATION,
            spot_max_price=args.spot_max_price if args.spot else None,
        )
        group = aws.autoscaling.Group(
            f"{name}-nodes",
            name=asg_name,
            min_size=0,
            max_size=args.node_count,
            desired_capacity=args.node_count,
            vpc_zone_identifiers=[subnet_id],
            placement_group=placement.name,
            capacity_rebalance=args.spot,
            health_check_type="EC2",
            # Spot capacity may take hours: `pulumi up` must not fail (or wait) for it.
            wait_for_capacity_timeout="0",
            mixed_instances_policy=aws.autoscaling.GroupMixedInstancesPolicyArgs(
                launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                    launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                        launch_template_id=template.id,
                        version=template.latest_version.apply(str),
                    ),
                    overrides=[
                        aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(
                            instance_type=t
                        )
                        for t in args.instance_types
                    ],
                ),
                instances_distribution=distribution,
            ),
            tags=[
                aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True)
                for k, v in node_tags(cluster).items()
            ],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends,
                # The controller owns the desired capacity once the group exists (0 when idle).
                ignore_changes=["desiredCapacity"],
            ),
        )
        aws.iam.RolePolicy(
            f"{name}-node-leave-group",
            role=role.id,
            policy=group.arn.apply(lambda arn: to_json(node_self_terminate_policy(arn))),
            opts=child,
        )

        self.group_name = group.name
        self.group_name_static = asg_name
        self.group_arn = group.arn
        self.launch_template_id = template.id
        self.role_name = role.name
        self.register_outputs(
            {
                "group_name": self.group_name,
                "group_arn": self.group_arn,
                "launch_template_id": self.launch_template_id,
                "role_name": self.role_name,
            }
        )
