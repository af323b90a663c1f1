"""Pulumi stack outputs: what the launch tasks know about the provisioned cluster.

Read from a JSON file (``--outputs FILE``, what ``pulumi stack output --json`` prints) or from the
Pulumi CLI (``pulumi stack output --json [--stack NAME]``). Validated once, here, so every later
step can trust the fields. Nodes have no fixed identity: the live truth is the Auto Scaling group
(:mod:`trainer.launch.group`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.launch import LaunchError

REQUIRED_KEYS: tuple[str, ...] = (
    "region",
    "bucket",
    "run_prefix",
    "cluster_name",
    "node_count",
    "instance_type",
    "autoscaling_group_name",
)


@dataclass(frozen=True)
class StackOutputs:
    """The stack outputs the launcher uses (see COMMON contract); extra outputs are kept in ``raw``."""

    region: str
    """AWS region of the cluster and the bucket."""
    bucket: str
    """Bucket name for data, checkpoints, logs."""
    run_prefix: str
    """``s3://<bucket>/runs``: every run lives in a folder below it."""
    cluster_name: str
    """Value of the ``twostage:cluster`` tag on every node."""
    node_count: int
    """The group's size: nodes a run asks for."""
    instance_type: str
    """The launch template's own type, e.g. ``p4d.24xlarge``."""
    group_name: str
    """The nodes' Auto Scaling group."""
    instance_types: tuple[str, ...] = ()
    """Every type the group may launch (``instance_type`` first)."""
    availability_zone: str = ""
    """AZ of the nodes (spot price lookups)."""
    spot: bool = True
    """Whether the nodes are spot instances."""
    allow_internet_egress: bool = False
    """``twostage:allowInternetEgress``: nodes reach the internet (else only the run bucket and
    AWS APIs, through VPC endpoints). Absent (a stack from before this output): False."""
    controller_instance_id: str = ""
    controller_instance_type: str = "t3.small"
    launch_template_id: str = ""
    subnet_id: str = ""
    """Subnet of the nodes."""
    security_group_id: str = ""
    """Security group of the nodes."""
    raw: Mapping[str, Any] | None = None
    """Every output as read."""

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> StackOutputs:
        """Validate a parsed outputs object; ``source`` names the file or stack in errors."""
        if not isinstance(data, dict):
            raise LaunchError(f"stack outputs from {source} are not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data or data[k] in (None, "")]
        if missing:
            raise LaunchError(
                f"stack outputs from {source} lack {', '.join(missing)}: "
                "run `pulumi up` for this stack (or pass the right --outputs FILE)"
            )
        try:
            node_count = int(data["node_count"])
        except (TypeError, ValueError):
            raise LaunchError(
                f"stack output node_count from {source} is not an integer: {data['node_count']!r}"
            ) from None
        if node_count < 1:
            raise LaunchError(
                f"stack output node_count from {source} must be >= 1, got {node_count}"
            )
        if not str(data["run_prefix"]).startswith("s3://"):
            raise LaunchError(
                f"stack output run_prefix from {source} must be an s3:// URI, got {data['run_prefix']!r}"
            )
        types = data.get("instance_types") or [data["instance_type"]]
        if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
            raise LaunchError(f"stack output instance_types from {source} is not a list of types")
        return cls(
            region=str(data["region"]),
            bucket=str(data["bucket"]),
            run_prefix=str(data["run_prefix"]).rstrip("/"),
            cluster_name=str(data["cluster_name"]),
            node_count=node_count,
            instance_type=str(data["instance_type"]),
            group_name=str(data["autoscaling_group_name"]),
            instance_types=tuple(types),
            availability_zone=str(data.get("availability_zone") or ""),
            spot=_flag(data.get("spot", True)),
            allow_internet_egress=_flag(data.get("allow_internet_egress", False)),
            controller_instance_id=str(data.get("controller_instance_id") or ""),
            controller_instance_type=str(data.get("controller_instance_type") or "t3.small"),
            launch_template_id=str(data.get("launch_template_id") or ""),
            subnet_id=str(data.get("subnet_id") or ""),
            security_group_id=str(data.get("security_group_id") or ""),
            raw=dict(data),
        )


def _flag(value: Any) -> bool:
    """A boolean output, also as the string a hand-written outputs file may hold."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def read_outputs_file(path: Path) -> StackOutputs:
    """Outputs from a JSON file as ``pulumi stack output --json`` prints it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LaunchError(f"outputs file {path} does not exist") from None
    except OSError as err:
        raise LaunchError(f"cannot read outputs file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LaunchError(
            f"outputs file {path} is not JSON (line {err.lineno}: {err.msg}); "
            "create it with `pulumi stack output --json > FILE`"
        ) from None
    return StackOutputs.from_dict(data, source=str(path))


Runner = Callable[..., subprocess.CompletedProcess]


def pulumi_outputs(
    stack: str | None, *, run: Runner = subprocess.run, cwd: Path | None = None
) -> StackOutputs:
    """Outputs of ``stack`` (or the selected stack) through the Pulumi CLI.

    ``run`` is injectable so tests need no Pulumi CLI. ``--show-secrets`` is not passed: the
    launcher needs no secret outputs.
    """
    cmd = ["pulumi", "stack", "output", "--json"]
    if stack:
        cmd += ["--stack", stack]
    name = f"stack {stack}" if stack else "the selected Pulumi stack"
    try:
        proc = run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError:
        raise LaunchError(
            "the pulumi CLI is not installed: install Pulumi (https://www.pulumi.com/docs/install/) "
            "or pass --outputs FILE (the JSON of `pulumi stack output --json`)"
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        reason = detail[-1] if detail else f"exit {proc.returncode}"
        raise LaunchError(
            f"cannot read outputs of {name}: {reason} "
            "(pass --stack NAME, run `pulumi up`, or pass --outputs FILE)"
        )
    try:
        data = json.loads(proc.stdout or "")
    except json.JSONDecodeError:
        raise LaunchError(f"`{' '.join(cmd)}` did not print JSON") from None
    if data == {}:
        raise LaunchError(f"{name} has no outputs: run `pulumi up` first")
    return StackOutputs.from_dict(data, source=name)


def load_outputs(
    *,
    stack: str | None = None,
    outputs_file: str | Path | None = None,
    run: Runner = subprocess.run,
) -> StackOutputs:
    """``--outputs FILE`` wins over ``--stack NAME``; neither → the selected Pulumi stack."""
    if outputs_file:
        return read_outputs_file(Path(outputs_file))
    return pulumi_outputs(stack, run=run)
