"""Pure decisions of a multi-node launch: ranks, rendezvous, the shared spec, EFA/NCCL environment.

Everything here is a function over plain data (no AWS, no subprocess) so it is tested directly;
:mod:`trainer.launch.node_script` renders the bash each node runs from a :class:`LaunchSpec` and a
:class:`RankAssignment`.

Ranks are per launch attempt: node *index* here is the rank of that attempt
(:func:`trainer.launch.group.launch_nodes`), not a fixed identity of an instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from artifacts.node import AGENT_DIR, ENV_FILE, READY_MARKER
from artifacts.node import PROJECT_DIR as REPO_DIR
from artifacts.node import SCRATCH_DIR as SCRATCH
from artifacts.node import VENV_PYTHON as PYTHON
from trainer.launch import LaunchError

NODE_ENV = ENV_FILE
DEFAULT_MASTER_PORT = 29500
LAUNCHERS = ("deepspeed", "torchrun")

GPUS_PER_INSTANCE: dict[str, int] = {
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
    "p3.16xlarge": 8,
    "p3dn.24xlarge": 8,
    "g5.xlarge": 1,
    "g5.2xlarge": 1,
    "g5.12xlarge": 4,
    "g5.48xlarge": 8,
    "g6.12xlarge": 4,
    "g6e.12xlarge": 4,
}
EFA_FAMILIES = ("p4d", "p4de", "p5", "p5e", "p5en", "p3dn", "trn1", "trn1n")


@dataclass(frozen=True)
class Node:
    """A live node as EC2 reports it."""

    index: int
    instance_id: str
    private_ip: str


@dataclass(frozen=True)
class RankAssignment:
    """One node's place in the job."""

    node_index: int
    node_rank: int
    instance_id: str
    private_ip: str
    is_head: bool


def assign_ranks(nodes: Sequence[Node]) -> list[RankAssignment]:
    """Node rank = node index; node 0 is the head (rank 0, rendezvous host).

    Rejects a set that is not exactly indices 0..N-1 with distinct instances and IPs: a
    duplicated rank or a missing one would hang the rendezvous until its time-out.
    """
    if not nodes:
        raise LaunchError("no nodes to launch on")
    indices = sorted(n.index for n in nodes)
    if indices != list(range(len(nodes))):
        raise LaunchError(f"node indices must be 0..{len(nodes) - 1} exactly once, got {indices}")
    for what, values in (
        ("instance id", [n.instance_id for n in nodes]),
        ("private IP", [n.private_ip for n in nodes]),
    ):
        if any(not v for v in values):
            raise LaunchError(f"a node has no {what} (is it running?)")
        if len(set(values)) != len(values):
            raise LaunchError(f"two nodes share a {what}: {sorted(values)}")
    return [
        RankAssignment(
            node_index=n.index,
            node_rank=n.index,
            instance_id=n.instance_id,
            private_ip=n.private_ip,
            is_head=n.index == 0,
        )
        for n in sorted(nodes, key=lambda n: n.index)
    ]


def head_address(assignments: Sequence[RankAssignment]) -> str:
    """The rendezvous host: the head node's private IP."""
    heads = [a for a in assignments if a.is_head]
    if len(heads) != 1:
        raise LaunchError(f"expected exactly one head node, got {len(heads)}")
    return heads[0].private_ip


def make_spec(run_uri: str, assignments: Sequence[RankAssignment], **kwargs: object) -> LaunchSpec:
    """The shared spec for these nodes: head IP as rendezvous, hosts in node-rank order."""
    ordered = sorted(assignments, key=lambda a: a.node_rank)
    return LaunchSpec(
        run_uri=run_uri,
        num_nodes=len(ordered),
        master_addr=head_address(ordered),
        hosts=tuple(a.private_ip for a in ordered),
        **kwargs,  # type: ignore[arg-type]
    )


def gpus_for(instance_type: str) -> int:
    """GPUs per node for a known instance type; unknown types must be given explicitly."""
    try:
        return GPUS_PER_INSTANCE[instance_type]
    except KeyError:
        raise LaunchError(
            f"unknown GPU count for instance type {instance_type}; known: "
            f"{', '.join(sorted(GPUS_PER_INSTANCE))}"
        ) from None


def network_env(instance_type: str) -> dict[str, str]:
    """EFA/NCCL environment for the instance type (EFA only where the family has it)."""
    env = {
        # A lost peer (spot reclaim) must fail the collective quickly so this node's trainer exits
        # and the watcher can relaunch, instead of hanging for the NCCL time-out.
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
        # Bootstrap over the VPC interface, never docker/loopback.
        "NCCL_SOCKET_IFNAME": "^lo,docker",
    }
    if instance_type.split(".")[0] in EFA_FAMILIES:
        env.update(
            {
                "FI_PROVIDER": "efa",
                "FI_EFA_USE_DEVICE_RDMA": "1",
                "FI_EFA_FORK_SAFE": "1",
                # SSM runs a non-login shell: the DLAMI's profile does not put these on the path.
                "LD_LIBRARY_PATH": "/opt/amazon/efa/lib:/opt/amazon/ofi-nccl/lib:"
                "/opt/aws-ofi-nccl/lib:${LD_LIBRARY_PATH:-}",
            }
        )
    return env


@dataclass(frozen=True)
class LaunchSpec:
    """Everything every node's command shares."""

    run_uri: str
    """The run prefix, e.g. ``s3://bucket/runs/2026-11-23-1530``."""
    num_nodes: int
    master_addr: str
    """Head node's private IP."""
    hosts: tuple[str, ...] = ()
    """Every node's private IP in node-rank order (the DeepSpeed hostfile; same on every node)."""
    instance_type: str = "p4d.24xlarge"
    master_port: int = DEFAULT_MASTER_PORT
    gpus_per_node: int | None = None
    """None → from the instance type."""
    launcher: str = "deepspeed"
    """``deepspeed`` (``--no_ssh``) or ``torchrun``."""
    node_env: str = NODE_ENV
    repo_dir: str = REPO_DIR
    python: str = PYTHON
    scratch: str = SCRATCH
    ready_marker: str = READY_MARKER
    ready_timeout_s: int = 1800
    """How long a freshly booted node may take to finish its bootstrap."""
    idle_timeout_s: int = 900
    """The run's ``run.idle_timeout_minutes``, handed to the node's dead-man agent."""
    agent_dir: str = AGENT_DIR
    """Where the launch leaves its state for the node agent (tests point it elsewhere)."""
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise LaunchError(
                f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}"
            )
        if self.num_nodes < 1:
            raise LaunchError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if not 1 <= self.master_port <= 65535:
            raise LaunchError(f"master_port must be a TCP port, got {self.master_port}")
        if not self.master_addr:
            raise LaunchError("master_addr (the head node's private IP) is empty")
        if self.launcher == "deepspeed" and len(self.hosts) != self.num_nodes:
            raise LaunchError(
                f"the DeepSpeed hostfile needs {self.num_nodes} node IPs, got {len(self.hosts)}"
            )
        if self.hosts and self.hosts[0] != self.master_addr:
            raise LaunchError("the rendezvous address must be the first host (node rank 0)")

    @property
    def gpus(self) -> int:
        return (
            self.gpus_per_node if self.gpus_per_node is not None else gpus_for(self.instance_type)
        )
