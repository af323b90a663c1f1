"""The bash each node runs through SSM for one launch, and the stop signal (pure text rendering).

The per-node script, rendered from a :class:`~trainer.launch.ranks.LaunchSpec` and the node's
:class:`~trainer.launch.ranks.RankAssignment`:

1. sources ``/etc/twostage/node.env`` (written by the node's user data) and refuses to run when
   the node's own instance id is not the one the command was rendered for; marks the launch
   active for the node's dead-man agent (and idle again when it ends, whatever the exit);
2. exports the EFA/NCCL environment for the instance type (p4d: libfabric EFA provider with GPU
   RDMA, NCCL async error handling so a lost peer fails the job fast instead of hanging);
3. downloads ``config.toml`` from the run prefix with the project's own store;
4. runs the DeepSpeed launcher without SSH (``--no_ssh --node_rank i``) or torchrun, which starts
   ``python -m trainer --config ... --run ...`` on every GPU;
5. records a failed ending in the run's ``STATUS.json`` in the launcher's words ("rank 5 on
   node 1 was killed by signal 9 (SIGKILL; …)": :mod:`trainer.launch.rank_watch` runs beside the
   launcher to see which rank ended first) before the verdict turns the code into 1, then
   the verdict's exit code (local file, the run prefix's ``logs/``, the script's own exit status).

Nodes belong to an Auto Scaling group, so the script never powers its node off (the group would
replace it): the controller scales the group to 0 at the end, and the node agent takes an idle
node out of the group (:mod:`trainer.launch.deadman`).

Ranks are per launch attempt: node *index* here is the rank of that attempt
(:func:`trainer.launch.group.launch_nodes`), not a fixed identity of an instance.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from artifacts.node import BOOT_LOG, ENV_INSTANCE_ID, ENV_RUN, launch_state_paths
from artifacts.run import ExitCode, Run
from trainer.launch import LaunchError
from trainer.launch.ranks import LaunchSpec, RankAssignment, head_address, network_env

# `invoke stop` signals the trainer *workers* (they commit a checkpoint and exit 75). The
# launchers are started with ``--module trainer`` so this pattern never matches them: SIGTERM
# to the DeepSpeed launcher would make it kill its workers after 30 s and exit 1.
WORKER_PATTERN = "-m trainer --config"


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


FIRST_GONE_FILE = "first_rank_gone"


def failure_who(node: RankAssignment) -> str:
    """Who the node's STATUS names when its launcher exits failed, as a bash word: the rank that
    ended first (``$who``, found by :mod:`trainer.launch.rank_watch`; the launcher does not say
    which) on this node (the controller calls the node by this index too)."""
    return f'"${{who:-a rank}} on node {node.node_index}"'


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
    first_gone = f"{work_dir_on_node(spec)}/{FIRST_GONE_FILE}"
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
        f"rm -f {q(first_gone)}",
        f"{q(spec.python)} -m trainer.launch.rank_watch $$ {q(first_gone)} "
        f">/dev/null 2>>{q(work_dir_on_node(spec) + '/rank_watch.log')} &",
        "watch=$!",
        argv,
        "rc=$?",
        'kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null',
        f"who=$(cat {q(first_gone)} 2>/dev/null || true)",
        # The run protocol's verdict (artifacts.run.verdict), the rule every launcher uses: the
        # run's STATUS decides, since a rank can abort at shutdown after everything was committed.
        # A failure becomes 1 there (a rank killed by SIGKILL: DeepSpeed's 247), so the node first
        # records it in STATUS in the launcher's words (artifacts.ending.record_failure).
        f'{q(spec.python)} -m artifacts.ending "$rc" {q(spec.run_uri)} {failure_who(node)}; rc=$?',
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
