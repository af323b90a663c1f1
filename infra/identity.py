"""Identity component: the node and controller roles, planned before anything that names them.

Why a component of its own: the bucket's KMS key policy names both roles by ARN (KMS refuses a
policy naming a principal that does not exist), and the roles' own scoped policies name the
bucket, the key and the group. So the roles come first, with only their trust policy and the SSM
agent's calls; storage names them in the key policy; compute and the controller attach the
scoped policies and instance profiles to them.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER
from infra.policies import assume_role_policy, ssm_agent_policy, to_json


def agent_role(
    prefix: str, description: str, tags: dict[str, str], opts: pulumi.ResourceOptions
) -> aws.iam.Role:
    """An EC2 role with the SSM agent's own policy (``<prefix>-role``, ``<prefix>-ssm-agent``).

    Why shared: nodes and the controller start from the same trust and agent permissions; each
    adds only its own scoped policy.
    """
    role = aws.iam.Role(
        f"{prefix}-role",
        assume_role_policy=to_json(assume_role_policy()),
        description=description,
        tags=tags,
        opts=opts,
    )
    aws.iam.RolePolicy(
        f"{prefix}-ssm-agent", role=role.id, policy=to_json(ssm_agent_policy()), opts=opts
    )
    return role


class Identity(pulumi.ComponentResource):
    """The cluster's two roles: GPU nodes and the controller."""

    node_role: aws.iam.Role
    controller_role: aws.iam.Role

    def __init__(self, name: str, cluster_name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("twostage:infra:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {TAG_CLUSTER: cluster_name}
        self.node_role = agent_role(
            f"{name}-node",
            f"{cluster_name} GPU nodes: SSM agent + the run bucket only",
            tags,
            child,
        )
        self.controller_role = agent_role(
            f"{name}-controller",
            f"{cluster_name} controller: this group, this cluster's SSM targets, the bucket",
            tags,
            child,
        )
        self.register_outputs(
            {"node_role_arn": self.node_role.arn, "controller_role_arn": self.controller_role.arn}
        )
