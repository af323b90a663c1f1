"""``python -m infra.pin_ami``: resolve the DLAMI once and pin it in the stack config.

The nodes' AMI is a stack key (``twostage:amiId``), never a moving ``latest`` lookup at plan time:
a new DLAMI release would otherwise give the launch template a new version on every routine
``pulumi up``. This reads the public SSM parameter named by ``twostage:amiSsmParameter`` /
``twostage:amiType`` (or ``--parameter``), prints the AMI id, and with ``--set`` (default) runs
``pulumi config set twostage:amiId <id>``. Run it again, explicitly, to move to a newer DLAMI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from infra.config import DEFAULT_AMI_TYPE, PROJECT, parse_config
from infra.errors import InfraError

Runner = Callable[..., subprocess.CompletedProcess]


def _config_get(key: str, stack: str | None, run: Runner) -> str | None:
    cmd = ["pulumi", "config", "get", f"{PROJECT}:{key}"] + (["--stack", stack] if stack else [])
    try:
        proc = run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InfraError(
            "the pulumi CLI is not installed: https://www.pulumi.com/docs/install/"
        ) from None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def parameter_name(stack: str | None, run: Runner) -> str:
    """The SSM parameter the stack's config names (amiSsmParameter, else amiType's DLAMI path)."""
    values = {
        k: v
        for k in ("amiSsmParameter", "amiType")
        if (v := _config_get(k, stack, run)) is not None
    }
    return parse_config({"amiType": DEFAULT_AMI_TYPE, **values}, stack="pin").ami_parameter_name


def resolve_ami(ssm: Any, parameter: str) -> str:
    """The AMI id in the public parameter (one-line error if it does not exist)."""
    from botocore.exceptions import ClientError

    try:
        value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        raise InfraError(
            f"{PROJECT}:amiType: cannot read {parameter} ({code}); check twostage:amiType / "
            "twostage:amiSsmParameter and aws:region"
        ) from None
    parse_config({"amiId": value}, stack="pin")  # the same validation as the stack key
    return value


def main(
    argv: Sequence[str] | None = None, *, run: Runner = subprocess.run, ssm: Any = None
) -> int:
    """Entry point; ``run`` and ``ssm`` are injectable so tests need no Pulumi CLI or AWS."""
    ap = argparse.ArgumentParser(prog="python -m infra.pin_ami", description=__doc__.split("\n")[0])
    ap.add_argument("--stack", help="Pulumi stack (default: the selected one)")
    ap.add_argument("--region", help="AWS region (default: the stack's aws:region)")
    ap.add_argument("--parameter", help="SSM parameter to resolve (default: from the stack config)")
    ap.add_argument("--print-only", action="store_true", help="print the AMI id, set nothing")
    args = ap.parse_args(argv)
    try:
        parameter = args.parameter or parameter_name(args.stack, run)
        if ssm is None:
            import boto3

            region = args.region or _config_get_raw("aws:region", args.stack, run)
            ssm = boto3.client("ssm", region_name=region)
        ami = resolve_ami(ssm, parameter)
        print(f"{parameter} -> {ami}")
        if not args.print_only:
            cmd = ["pulumi", "config", "set", f"{PROJECT}:amiId", ami]
            run(cmd + (["--stack", args.stack] if args.stack else []), check=True)
            print(f"pinned {PROJECT}:amiId = {ami}; `pulumi up` uses it until you pin another")
    except InfraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _config_get_raw(key: str, stack: str | None, run: Runner) -> str | None:
    cmd = ["pulumi", "config", "get", key] + (["--stack", stack] if stack else [])
    proc = run(cmd, capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


if __name__ == "__main__":
    raise SystemExit(main())
