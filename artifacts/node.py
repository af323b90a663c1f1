"""Facts about a training node shared by ``infra/`` (which builds nodes) and ``trainer/launch/``
(which drives them): paths on the node, the keys of its environment file, its EC2 tags, and the
lock of what it installs.

One definition each: the user data that writes ``/etc/twostage/node.env`` and the launch script
that sources it import the same names, and so do the Pulumi program that tags nodes and the SSM
adapter that targets them by tag. Pure constants, importable from anywhere (no Pulumi, no boto3).
"""

from __future__ import annotations

import re
from pathlib import Path

# -- paths on a node ----------------------------------------------------------------------------
PROJECT_DIR = "/opt/twostage"
"""The project checkout (the bootstrap bundle or a git clone)."""
VENV_PYTHON = f"{PROJECT_DIR}/.venv/bin/python"
"""The project's venv, built on the DLAMI's PyTorch (``--system-site-packages``)."""
DLAMI_PYTHON = "/opt/pytorch/bin/python"
ENV_FILE = "/etc/twostage/node.env"
"""``KEY=value`` lines (:data:`ENV_KEYS`), written first by the user data; sourced by every launch."""
READY_MARKER = "/etc/twostage/bootstrap.done"
"""Written by the user data when the project is installed (the SSM agent is up earlier)."""
SCRATCH_DIR = "/opt/dlami/nvme/twostage"
"""Local scratch on the instance NVMe (checkpoint shards before upload, data caches)."""
BOOT_LOG = "/var/log/twostage-bootstrap.log"

# -- keys of a machine's environment file (nodes and the controller) ---------------------------
ENV_CLUSTER = "TWOSTAGE_CLUSTER"
ENV_ROLE = "TWOSTAGE_ROLE"
""":data:`ROLE_NODE` or :data:`ROLE_CONTROLLER`."""
ENV_BUCKET = "TWOSTAGE_BUCKET"
ENV_RUN_PREFIX = "TWOSTAGE_RUN_PREFIX"
ENV_GROUP = "TWOSTAGE_GROUP"
"""The nodes' Auto Scaling group (a node leaves it; the controller scales it)."""
ENV_INSTANCE_ID = "TWOSTAGE_INSTANCE_ID"
"""This machine's instance id, from IMDSv2 at boot (a launch command checks it is for this node)."""
ENV_SCRATCH = "TWOSTAGE_SCRATCH"
ENV_PYTHON = "TWOSTAGE_PYTHON"
ENV_RUN = "TWOSTAGE_RUN"
"""Exported by the launch script: the run URI of the current launch."""
ENV_NODE_COUNT = "TWOSTAGE_NODE_COUNT"
"""Controller only: the group's size (``nodeCount``)."""
ENV_INSTANCE_TYPES = "TWOSTAGE_INSTANCE_TYPES"
"""Controller only: the allowed node types, comma-separated."""
ENV_SPOT = "TWOSTAGE_SPOT"
"""Controller only: ``true`` for spot nodes."""
ENV_AVAILABILITY_ZONE = "TWOSTAGE_AVAILABILITY_ZONE"
"""Controller only: the nodes' AZ (spot price lookups)."""
ENV_CONTROLLER_TYPE = "TWOSTAGE_CONTROLLER_TYPE"
"""Controller only: its own instance type (for the cost report)."""
ENV_KEYS = (
    ENV_CLUSTER,
    ENV_ROLE,
    ENV_BUCKET,
    ENV_RUN_PREFIX,
    ENV_GROUP,
    ENV_SCRATCH,
    ENV_PYTHON,
)

# -- roles, tags, names ---------------------------------------------------------------------------
ROLE_NODE = "node"
ROLE_CONTROLLER = "controller"
TAG_CLUSTER = "twostage:cluster"
"""Every resource of a cluster carries it; SSM and IAM conditions filter on it."""
TAG_ROLE = "twostage:role"
""":data:`ROLE_NODE` on the group's instances, :data:`ROLE_CONTROLLER` on the controller."""
GROUP_TAG = "aws:autoscaling:groupName"
"""Set by Auto Scaling on every instance it launches (ended ones too)."""


def node_tags(cluster: str) -> dict[str, str]:
    """The tags every node carries (the group propagates them at launch)."""
    return {"Name": f"{cluster}-node", TAG_CLUSTER: cluster, TAG_ROLE: ROLE_NODE}


def group_name(cluster: str) -> str:
    """The nodes' Auto Scaling group: fixed by the cluster name, so IAM and user data know it."""
    return f"{cluster}-nodes"


def run_document_name(cluster: str) -> str:
    """The project's SSM Command document the controller launches with (the only one it may
    send): fixed by the cluster name, so IAM (``infra``) and the sender (``trainer.launch``) agree."""
    return f"{cluster}-run-script"


# -- local state of a node's launches (written by the launch script, read by the node agent) -------
AGENT_DIR = "/run/twostage"


def launch_state_paths(agent_dir: str = AGENT_DIR) -> tuple[str, str, str]:
    """(active, ended, idle timeout) files of a node's launches under ``agent_dir``.

    *active* holds the pid of the running launch script; *ended* is touched when a launch ends
    (its mtime is when the node became idle); *idle timeout* holds the current run's
    ``run.idle_timeout_minutes`` in seconds.
    """
    return f"{agent_dir}/launch.active", f"{agent_dir}/launch.ended", f"{agent_dir}/idle_timeout_s"


LAUNCH_ACTIVE, LAUNCH_ENDED, IDLE_TIMEOUT_FILE = launch_state_paths()

# -- bucket-level control objects (not under a run; nodes may read, never write them) -------------
CONTROL_PREFIX = "control/"
REQUEST_KEY = f"{CONTROL_PREFIX}request.json"
"""The run the controller should supervise (written by ``invoke pretrain``)."""
HEARTBEAT_KEY = f"{CONTROL_PREFIX}heartbeat.json"
"""The controller's heartbeat: nodes leave when it is older than their idle timeout."""
CONTROLLER_STATE_KEY = f"{CONTROL_PREFIX}controller.json"
"""What the controller is doing (phase, attempt, nodes), for ``invoke status``."""
RUNS_PREFIX = "runs/"
"""Where runs live in the bucket (the only prefix nodes may write)."""
BOOTSTRAP_PREFIX = "bootstrap/"
"""The source bundle every node runs as root (read-only for nodes)."""

# -- what a node installs (the repository's lock; ``infra`` builds the wheelhouse from it) ----------
NODE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "infra" / "requirements-node.in"
"""The nodes' direct dependencies (ranges); ``invoke lock-node`` resolves it into :data:`NODE_LOCK`."""
NODE_LOCK = NODE_REQUIREMENTS.with_suffix(".lock")
"""Every distribution the project installs on a node, pinned and hashed. Nothing outside it is
(the wheelhouse is built from it; ``pip install --no-index --require-hashes``), so a package a
recipe needs and this file lacks is missing on the nodes, whatever this machine has. The DLAMI's
own PyTorch environment sits underneath; the project relies on it for torch only."""
_REQUIREMENT_NAME = re.compile(
    r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(?:[=<>!~;@]|$)"
)


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Tensorboard_X`` and ``tensorboardx`` agree)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_distributions(text: str) -> frozenset[str]:
    """The (normalised) distribution names a requirements lock installs.

    Reads what pip-compile and ``uv pip compile`` write: ``name==version \\`` with continued
    ``--hash`` lines, ``# via`` comments, extras, markers. Option lines (``--index-url``, ``-e``)
    name no distribution and are skipped.
    """
    names = set()
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _REQUIREMENT_NAME.match(line)
        if match:
            names.add(normalise(match.group(1)))
    return frozenset(names)
