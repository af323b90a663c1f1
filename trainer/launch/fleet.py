"""Thin EC2 adapter: the cluster's nodes by tag, replacing a lost node, terminating all.

Replacement route (chosen over re-running Pulumi): ``run_instances`` from the stack's launch
template (spot options, IMDSv2, EFA interfaces, placement group, encrypted root volume, shutdown
= terminate all come from it) with the lost node's tags and its user data, index rewritten. Why:
it needs no Pulumi CLI on the laptop and takes seconds. The cost: a replacement node is not in
the Pulumi state. It carries ``twostage:replacement=true``; the watcher terminates it with the
rest when the run ends, ``invoke stop --terminate`` does too, and ``pulumi up --refresh`` later
recreates the node the state lost. Never run ``pulumi up --refresh`` while replacements live
(the index would then exist twice).
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

from artifacts.node import ENV_NODE_INDEX, TAG_CLUSTER, TAG_REPLACEMENT
from artifacts.node import TAG_NODE_INDEX as TAG_INDEX
from trainer.launch.cost import transition_time
from trainer.launch.ssm import ssm_online
from trainer.launch.watch import LIVE_STATES, NodeState

log = logging.getLogger(__name__)

NO_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientHostCapacity",
        "Unsupported",
    }
)
_INDEX_LINE = re.compile(rf"^{ENV_NODE_INDEX}=\d+$", re.MULTILINE)
_NODE_COMMENT = re.compile(r"\bnode \d+\)")


def retarget_user_data(user_data: str, index: int) -> str:
    """A node's bootstrap script rewritten for another node index (pure)."""
    if not _INDEX_LINE.search(user_data):
        raise ValueError(f"user data has no {ENV_NODE_INDEX} line")
    text = _INDEX_LINE.sub(f"{ENV_NODE_INDEX}={index}", user_data)
    return _NODE_COMMENT.sub(f"node {index})", text, count=1)


def node_from_instance(inst: dict[str, Any], online: dict[str, bool] | None) -> NodeState | None:
    """A :class:`NodeState` from a ``describe_instances`` instance (None without an index tag)."""
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    try:
        index = int(tags[TAG_INDEX])
    except (KeyError, ValueError):
        return None
    state = inst.get("State", {}).get("Name", "pending")
    end = None if state in LIVE_STATES else transition_time(inst.get("StateTransitionReason", ""))
    iid = inst["InstanceId"]
    return NodeState(
        index=index,
        instance_id=iid,
        private_ip=inst.get("PrivateIpAddress", "") or "",
        state=state,
        launch_time=inst["LaunchTime"].timestamp(),
        end_time=end,
        ssm_online=None if online is None else online.get(iid, False),
    )


class Ec2Fleet:
    """The real :class:`trainer.launch.watch.Fleet` for one cluster."""

    def __init__(
        self, ec2: Any, ssm: Any | None, *, cluster: str, launch_template_id: str = ""
    ) -> None:
        self.ec2, self.ssm = ec2, ssm
        self.cluster = cluster
        self.launch_template_id = launch_template_id
        self._user_data: dict[int, str] = {}

    def _instances(self) -> list[dict[str, Any]]:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def nodes(self) -> list[NodeState]:
        instances = self._instances()
        live = [i["InstanceId"] for i in instances if i["State"]["Name"] in LIVE_STATES]
        online = ssm_online(self.ssm, live) if (self.ssm is not None and live) else None
        nodes = [n for n in (node_from_instance(i, online) for i in instances) if n is not None]
        for n in nodes:
            if n.state in LIVE_STATES and n.index not in self._user_data:
                self._remember_user_data(n)
        return nodes

    def _remember_user_data(self, node: NodeState) -> None:
        resp = self.ec2.describe_instance_attribute(
            InstanceId=node.instance_id, Attribute="userData"
        )
        value = resp.get("UserData", {}).get("Value")
        if value:
            self._user_data[node.index] = base64.b64decode(value).decode("utf-8")

    def user_data_for(self, index: int) -> str | None:
        if index in self._user_data:
            return self._user_data[index]
        for text in self._user_data.values():
            return retarget_user_data(text, index)
        return None

    def replace(self, index: int) -> NodeState | None:
        from botocore.exceptions import ClientError

        from trainer.launch import LaunchError

        if not self.launch_template_id:
            raise LaunchError(
                "stack outputs have no launch_template_id: cannot replace a lost node"
            )
        user_data = self.user_data_for(index)
        if user_data is None:
            raise LaunchError(f"no node's user data is known: cannot bootstrap a new node {index}")
        tags = [
            {"Key": "Name", "Value": f"{self.cluster}-node-{index}"},
            {"Key": TAG_CLUSTER, "Value": self.cluster},
            {"Key": TAG_INDEX, "Value": str(index)},
            {"Key": TAG_REPLACEMENT, "Value": "true"},
        ]
        try:
            resp = self.ec2.run_instances(
                LaunchTemplate={"LaunchTemplateId": self.launch_template_id, "Version": "$Latest"},
                MinCount=1,
                MaxCount=1,
                UserData=user_data,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in NO_CAPACITY_CODES:
                log.warning("no capacity for node %d: %s", index, code)
                return None
            raise
        node = node_from_instance(resp["Instances"][0], None)
        if node is not None:
            self._user_data.setdefault(index, user_data)
        return node

    def terminate_all(self) -> list[str]:
        # Stopped nodes still pay for their volumes: terminate them too.
        ids = [
            i["InstanceId"]
            for i in self._instances()
            if i["State"]["Name"] in (*LIVE_STATES, "stopping", "stopped")
        ]
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)
            log.info("terminated %s", ", ".join(ids))
        return ids
