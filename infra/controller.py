"""Controller component: a small on-demand instance that supervises runs in the cloud.

It runs the watch state machine (``python -m trainer.launch.controller``, a systemd service) so a
run goes on when the laptop closes: it polls the bucket for run requests, sets the nodes' group
to the wanted size, launches over SSM Run Command, relaunches after a loss or exit 75, and scales
the group to 0 when the run is over. Why an instance and not an event-driven design (Lambda +
EventBridge): the watch loop waits for hours on capacity and polls SSM invocations every minute;
one t3.small (about $0.02/h) keeps that loop simple and identical to the tested one, and the
dead-man switches on the nodes cover the controller's own death (its heartbeat in the bucket).

Its role is scoped to this cluster: describe calls, ``SetDesiredCapacity`` on this group only
(ARN + ``twostage:cluster`` tag), ``SendCommand`` only to instances tagged with this cluster, the
run bucket. No ingress; HTTPS out only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from artifacts.node import (
    ENV_AVAILABILITY_ZONE,
    ENV_CONTROLLER_TYPE,
    ENV_INSTANCE_TYPES,
    ENV_NODE_COUNT,
    ENV_SPOT,
    ROLE_CONTROLLER,
    TAG_CLUSTER,
    TAG_ROLE,
    run_document_name,
)
from infra.controller_policy import controller_policy
from infra.policies import to_json
from infra.run_document import run_document
from infra.userdata import Bootstrap, render_user_data


@dataclass(frozen=True)
class ControllerArgs:
    cluster_name: str
    instance_type: str
    ami_id: str
    group_name: str
    node_count: int
    node_instance_types: tuple[str, ...]
    spot: bool
    repo_url: str | None = None
    repo_ref: str | None = None
    source_sha256: str | None = None
    wheelhouse_sha256: str = ""


def controller_env(args: ControllerArgs, availability_zone: str) -> tuple[tuple[str, str], ...]:
    """What the controller knows about the cluster besides the common keys (pure)."""
    return (
        (ENV_AVAILABILITY_ZONE, availability_zone),
        (ENV_NODE_COUNT, str(args.node_count)),
        (ENV_INSTANCE_TYPES, ",".join(args.node_instance_types)),
        (ENV_SPOT, "true" if args.spot else "false"),
        (ENV_CONTROLLER_TYPE, args.instance_type),
    )


class Controller(pulumi.ComponentResource):
    """The on-demand supervisor instance and its scoped role."""

    instance_id: pulumi.Output[str]
    role_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: ControllerArgs,
        *,
        role: aws.iam.Role,
        subnet_id: pulumi.Input[str],
        security_group_id: pulumi.Input[str],
        bucket_name: pulumi.Input[str],
        bucket_arn: pulumi.Input[str],
        run_prefix: pulumi.Input[str],
        region: pulumi.Input[str],
        group_arn: pulumi.Input[str],
        source_uri: pulumi.Input[str | None],
        wheelhouse_uri: pulumi.Input[str],
        availability_zone: pulumi.Input[str],
        depends_on: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Controller", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        cluster = args.cluster_name
        tags = {TAG_CLUSTER: cluster}

        partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id
        # The role (infra.identity) gets its scope here; the bucket's key names it in its policy.
        aws.iam.RolePolicy(
            f"{name}-controller-scope",
            role=role.id,
            policy=pulumi.Output.all(bucket_arn, group_arn, region, account, partition).apply(
                lambda v: to_json(
                    controller_policy(
                        bucket_arn=v[0],
                        group_arn=v[1],
                        cluster=cluster,
                        region=v[2],
                        account=v[3],
                        partition=v[4],
                    )
                )
            ),
            opts=child,
        )
        # The one Run Command document the controller may send (typed, base64 script).
        aws.ssm.Document(
            f"{name}-run-document",
            name=run_document_name(cluster),
            document_type="Command",
            document_format="JSON",
            content=to_json(run_document()),
            tags=tags,
            opts=child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-controller-profile", role=role.name, tags=tags, opts=child
        )

        user_data = pulumi.Output.all(
            bucket_name, run_prefix, region, source_uri, availability_zone, wheelhouse_uri
        ).apply(
            lambda v: render_user_data(
                Bootstrap(
                    role=ROLE_CONTROLLER,
                    cluster=cluster,
                    bucket=v[0],
                    run_prefix=v[1],
                    region=v[2],
                    group_name=args.group_name,
                    repo_url=args.repo_url,
                    repo_ref=args.repo_ref,
                    source_uri=v[3],
                    source_sha256=args.source_sha256,
                    wheelhouse_uri=v[5],
                    wheelhouse_sha256=args.wheelhouse_sha256,
                    extra_env=controller_env(args, v[4]),
                )
            )
        )
        instance = aws.ec2.Instance(
            f"{name}-controller",
            ami=args.ami_id,
            instance_type=args.instance_type,
            subnet_id=subnet_id,
            vpc_security_group_ids=[security_group_id],
            iam_instance_profile=profile.name,
            associate_public_ip_address=False,
            user_data=user_data,
            # The controller keeps no state of its own (runs live in the bucket): a changed
            # bootstrap gives a fresh controller that picks the run up from the bucket.
            user_data_replace_on_change=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=1,
                instance_metadata_tags="enabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", delete_on_termination=True
            ),
            tags={**tags, TAG_ROLE: ROLE_CONTROLLER, "Name": f"{cluster}-controller"},
            volume_tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on or []),
        )
        self.instance_id = instance.id
        self.role_name = role.name
        self.register_outputs({"instance_id": self.instance_id, "role_name": self.role_name})
