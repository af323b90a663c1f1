"""Pure decisions of a multi-node launch: ranks, rendezvous, environment, the per-node script.

Everything here is a function over plain data (no AWS, no subprocess) so it is tested directly.
The script each node runs through SSM:

1. sources ``/etc/twostage/node.env`` (written by the node's user data) and refuses to run when
   the node's own instance id is not the one the command was rendered for; marks the launch
   active for the node's dead-man agent (and idle again when it ends, whatever the exit);
2. exports the EFA/NCCL environment for the instance type (p4d: libfabric EFA provider with GPU
   RDMA, NCCL async error handling so a lost peer fails the job fast instead of hanging);
3. downloads ``config.toml`` from the run prefix with the project's own store;
4. runs the DeepSpeed launcher without SSH (``--no_ssh --node_rank i``) or torchrun, which starts
   ``python -m trainer --config ... --run ...`` on every GPU;
5. records the exit code (local file, the run prefix's ``logs/``, the script's own exit status).

Nodes belong to an Auto Scaling group, so the script never powers its node off (the group would
replace it): the controller scales the group to 0 at the end, and the node agent takes an idle
node out of the group (:mod:`trainer.launch.deadman`).

Ranks are per launch attempt: node *index* here is the rank of that attempt
(:func:`trainer.launch.group.launch_nodes`), not a fixed identity of an instance.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from artifacts.node import (
    AGENT_DIR,
    BOOT_LOG,
    ENV_FILE,
    ENV_INSTANCE_ID,
    ENV_RUN,
    READY_MARKER,
    launch_state_paths,
)
from artifacts.node import PROJECT_DIR as REPO_DIR
from artifacts.node import SCRATCH_DIR as SCRATCH
from artifacts.node import VENV_PYTHON as PYTHON
from artifacts.run import ExitCode, Run
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

# `invoke stop` signals the trainer *workers* (they commit a checkpoint and exit 75). The
# launchers are started with ``--module trainer`` so this pattern never matches them: SIGTERM
# to the DeepSpeed launcher would make it kill its workers after 30 s and exit 1.
WORKER_PATTERN = "-m trainer --config"


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


def run_slug(run_uri: str) -> str:
    """A filesystem-safe name for the run's scratch folder on the node."""
    name = run_uri.rstrip("/").rsplit("/", 1)[-1] or "run"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def work_dir_on_node(spec: LaunchSpec) -> str:
    """The run's scratch folder on the node's local NVMe."""
    return f"{spec.scratch}/runs/{run_slug(spec.run_uri)}"


def config_path_on_node(spec: LaunchSpec) -> str:
    return f"{work_dir_on_node(spec)}/{Run.CONFIG}"


def hostfile_text(spec: LaunchSpec) -> str:
    """DeepSpeed hostfile: one ``<ip> slots=<gpus>`` line per node, in node-rank order."""
    return "".join(f"{ip} slots={spec.gpus}\n" for ip in spec.hosts)


def launcher_argv(spec: LaunchSpec, node: RankAssignment, config_path: str) -> list[str]:
    """The launcher command for one node (starts ``python -m trainer`` on each GPU)."""
    trainer_args = ["--config", config_path, "--run", spec.run_uri]
    if spec.launcher == "deepspeed":
        return [
            spec.python, "-m", "deepspeed.launcher.runner",
            "--hostfile", f"{work_dir_on_node(spec)}/hostfile",
            "--no_ssh",
            f"--node_rank={node.node_rank}",
            "--num_nodes", str(spec.num_nodes),
            "--num_gpus", str(spec.gpus),
            "--master_addr", spec.master_addr,
            "--master_port", str(spec.master_port),
            "--no_local_rank",
            "--module", "trainer",
            *trainer_args,
        ]  # fmt: skip
    return [
        spec.python, "-m", "torch.distributed.run",
        "--nnodes", str(spec.num_nodes),
        "--node_rank", str(node.node_rank),
        "--nproc_per_node", str(spec.gpus),
        "--master_addr", spec.master_addr,
        "--master_port", str(spec.master_port),
        "--module", "trainer",
        # torchrun's parser takes "--run" for an ambiguous prefix of its --run-path.
        "--config", config_path, "--run-uri", spec.run_uri,
    ]  # fmt: skip


_FETCH = (
    "import sys; from artifacts.run import Run; "
    "Run(sys.argv[1]).store.download_file(Run.CONFIG, sys.argv[2])"
)
_PUT = (
    "import sys; from artifacts.run import Run; "
    "Run(sys.argv[1]).store.put_bytes(sys.argv[2], sys.argv[3].encode())"
)


def exit_code_key(node_index: int) -> str:
    """Where a node records its trainer's exit code, relative to the run prefix."""
    return Run.exit_code(node_index)


def node_script(spec: LaunchSpec, node: RankAssignment) -> str:
    """The bash script SSM runs on one node (see the module docstring for the steps)."""
    q = shlex.quote
    boot = int(ExitCode.BOOT)
    active, ended, idle_file = launch_state_paths(spec.agent_dir)
    cfg = config_path_on_node(spec)
    env = {**network_env(spec.instance_type), **spec.extra_env}
    # Values may reference ${VAR} (LD_LIBRARY_PATH), so double-quote rather than shlex-quote them.
    exports = "\n".join(f'export {k}="{v}"' for k, v in env.items())
    argv = " ".join(q(a) for a in launcher_argv(spec, node, cfg))
    role = "head" if node.is_head else "worker"
    lines = [
        "#!/bin/bash",
        f"# twostage: run {spec.run_uri}, node {node.node_index} ({role}) of {spec.num_nodes}, "
        f"rendezvous {spec.master_addr}:{spec.master_port}",
        "set -uo pipefail",
        "set -a",
        f". {q(spec.node_env)} || {{ echo 'error: cannot read {spec.node_env}' >&2; exit {boot}; }}",
        "set +a",
        f'if [ "${{{ENV_INSTANCE_ID}:-}}" != "{node.instance_id}" ]; then',
        f'  echo "error: this is ${{{ENV_INSTANCE_ID}:-?}}, the command is for {node.instance_id}" >&2',
        f"  exit {boot}",
        "fi",
        # For the node agent: a launch is active (its pid), and when it ended (idle since).
        f"mkdir -p {q(spec.agent_dir)}",
        f"echo {int(spec.idle_timeout_s)} > {q(idle_file)}",
        f"echo $$ > {q(active)}",
        f"trap {q(f'rm -f {active}; touch {ended}')} EXIT",
        f"waited=0; while [ ! -e {q(spec.ready_marker)} ]; do",
        f"  if [ $waited -ge {spec.ready_timeout_s} ]; then",
        f"    echo 'error: node bootstrap not finished after {spec.ready_timeout_s} s "
        f"(see {BOOT_LOG})' >&2; exit {boot}",
        "  fi",
        "  sleep 10; waited=$((waited + 10))",
        "done",
        exports,
        f"export {ENV_RUN}={q(spec.run_uri)}",
        f"mkdir -p {q(work_dir_on_node(spec))}",
        f"cd {q(spec.repo_dir)}",
        f"{q(spec.python)} -c {q(_FETCH)} {q(spec.run_uri)} {q(cfg)} || "
        f"{{ echo 'error: cannot download {Run.CONFIG} from {spec.run_uri}' >&2; exit {boot}; }}",
        *(
            [f"printf %s {q(hostfile_text(spec))} > {q(work_dir_on_node(spec) + '/hostfile')}"]
            if spec.launcher == "deepspeed"
            else []
        ),
        f'echo "twostage: node {node.node_index} rank {node.node_rank} starting {spec.launcher}"',
        argv,
        "rc=$?",
        # The run protocol's verdict (artifacts.run.verdict), the rule every launcher uses: the
        # run's STATUS decides, since a rank can abort at shutdown after everything was committed.
        f'{q(spec.python)} -m artifacts.run verdict "$rc" {q(spec.run_uri)}; rc=$?',
        f'echo "$rc" > {q(work_dir_on_node(spec) + "/exit_code")}',
        f'{q(spec.python)} -c {q(_PUT)} {q(spec.run_uri)} {q(exit_code_key(node.node_index))} "$rc" '
        "|| echo 'warning: could not record the exit code in the run prefix' >&2",
        'echo "twostage: trainer exited with $rc"',
    ]
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"


def node_scripts(spec: LaunchSpec, assignments: Sequence[RankAssignment]) -> dict[int, str]:
    """One script per node index, all sharing the spec's rendezvous."""
    if len(assignments) != spec.num_nodes:
        raise LaunchError(f"spec is for {spec.num_nodes} nodes, got {len(assignments)} assignments")
    if head_address(assignments) != spec.master_addr:
        raise LaunchError("the rendezvous address is not the head node's private IP")
    return {a.node_index: node_script(spec, a) for a in assignments}


def stop_script(signal: str = "TERM") -> str:
    """What `invoke stop` runs on every node: signal the trainer workers (they commit and exit 75)."""
    return (
        "#!/bin/bash\n"
        f"if pkill -{signal} -f -- {shlex.quote(WORKER_PATTERN)}; then\n"
        f'  echo "twostage: sent SIG{signal} to the trainer"\n'
        "else\n"
        '  echo "twostage: no trainer running on this node"\n'
        "fi\n"
    )
