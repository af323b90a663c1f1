"""The nodes' Auto Scaling group: who is in it, how many we want, and ranks per launch.

The group (created by ``pulumi up``) owns every node: AWS launches them, replaces a reclaimed spot
node and removes them when the desired capacity goes to 0. This module only *reads* the group and
*sets its desired capacity*; nothing here launches or terminates an instance itself.

:func:`launch_nodes` is the pure rank assignment of one launch attempt: the group's InService,
running instances in a stable order (oldest first, then instance id), the first ``wanted`` of
them, ranks 0..k-1. Oldest first keeps the head (rank 0, the rendezvous host) on the same instance
across relaunches as long as it lives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from artifacts.node import GROUP_TAG
from trainer.launch import LaunchError
from trainer.launch.cost import transition_time
from trainer.launch.ports import LIVE_STATES, Member
from trainer.launch.ranks import Node

log = logging.getLogger(__name__)


def launch_nodes(members: Sequence[Member], wanted: int) -> list[Node]:
    """The nodes of one launch attempt: usable members in a stable order, at most ``wanted``."""
    usable = sorted((m for m in members if m.usable), key=lambda m: (m.launch_time, m.instance_id))
    return [Node(i, m.instance_id, m.private_ip) for i, m in enumerate(usable[:wanted])]


class Group:
    """The real group adapter (boto3 ``autoscaling``, ``ec2`` and optionally ``ssm`` clients)."""

    def __init__(self, autoscaling: Any, ec2: Any, ssm: Any | None, *, name: str) -> None:
        self.autoscaling, self.ec2, self.ssm = autoscaling, ec2, ssm
        self.name = name

    def _group(self) -> dict[str, Any]:
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])[
            "AutoScalingGroups"
        ]
        if not groups:
            raise LaunchError(f"Auto Scaling group {self.name} does not exist: run `pulumi up`")
        return groups[0]

    def desired(self) -> int:
        return int(self._group()["DesiredCapacity"])

    def max_size(self) -> int:
        return int(self._group()["MaxSize"])

    def set_desired(self, capacity: int) -> None:
        """Ask for ``capacity`` nodes (0: AWS terminates them all)."""
        self.autoscaling.set_desired_capacity(
            AutoScalingGroupName=self.name, DesiredCapacity=capacity, HonorCooldown=False
        )
        log.info("group %s: desired capacity %d", self.name, capacity)

    def members(self) -> list[Member]:
        """Every instance the group launched, live and ended (ended ones count for the cost)."""
        lifecycle = {i["InstanceId"]: i["LifecycleState"] for i in self._group()["Instances"]}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{GROUP_TAG}", "Values": [self.name]}]
        )
        instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        live = [i["InstanceId"] for i in instances if i["State"]["Name"] in LIVE_STATES]
        online = None
        if self.ssm is not None and live:
            from trainer.launch.ssm import ssm_online

            online = ssm_online(self.ssm, live)
        out = []
        for inst in instances:
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            end = (
                None
                if state in LIVE_STATES
                else transition_time(inst.get("StateTransitionReason", ""))
            )
            out.append(
                Member(
                    instance_id=iid,
                    private_ip=inst.get("PrivateIpAddress", "") or "",
                    instance_type=inst.get("InstanceType", ""),
                    state=state,
                    lifecycle=lifecycle.get(iid, ""),
                    launch_time=inst["LaunchTime"].timestamp(),
                    end_time=end,
                    ssm_online=None if online is None else online.get(iid, False),
                )
            )
        return out
