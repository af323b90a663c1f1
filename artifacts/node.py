"""Facts about a training node shared by ``infra/`` (which builds nodes) and ``trainer/launch/``
(which drives them): paths on the node, the keys of its environment file, and its EC2 tags.

One definition each: the user data that writes ``/etc/twostage/node.env`` and the launch script
that sources it import the same names, and so do the Pulumi program that tags nodes and the SSM
adapter that targets them by tag. Pure constants, importable from anywhere (no Pulumi, no boto3).
"""

from __future__ import annotations

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

# -- keys of the node's environment file -------------------------------------------------------
ENV_CLUSTER = "TWOSTAGE_CLUSTER"
ENV_NODE_INDEX = "TWOSTAGE_NODE_INDEX"
ENV_NODE_COUNT = "TWOSTAGE_NODE_COUNT"
ENV_BUCKET = "TWOSTAGE_BUCKET"
ENV_RUN_PREFIX = "TWOSTAGE_RUN_PREFIX"
ENV_SCRATCH = "TWOSTAGE_SCRATCH"
ENV_PYTHON = "TWOSTAGE_PYTHON"
ENV_RUN = "TWOSTAGE_RUN"
"""Exported by the launch script: the run URI of the current launch."""
ENV_KEYS = (
    ENV_CLUSTER,
    ENV_NODE_INDEX,
    ENV_BUCKET,
    ENV_RUN_PREFIX,
    ENV_NODE_COUNT,
    ENV_SCRATCH,
    ENV_PYTHON,
)

# -- EC2 tags -----------------------------------------------------------------------------------
TAG_CLUSTER = "twostage:cluster"
"""Every resource of a cluster carries it; the launcher finds nodes by it."""
TAG_NODE_INDEX = "twostage:node-index"
"""A node's index 0..N-1 (node rank); SSM targets a node by cluster + index."""
TAG_REPLACEMENT = "twostage:replacement"
"""On a node started outside the Pulumi state to replace a lost one."""


def node_tags(cluster: str, index: int) -> dict[str, str]:
    """The EC2 tags every node carries (the launcher and SSM filter on them)."""
    return {
        "Name": f"{cluster}-node-{index}",
        TAG_CLUSTER: cluster,
        TAG_NODE_INDEX: str(index),
    }
