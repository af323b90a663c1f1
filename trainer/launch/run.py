"""Orchestration behind `invoke pretrain` (remote path); shared pieces of the lifecycle tasks.

Reads the stack outputs, checks the nodes, uploads the run config (and local data) to the run
prefix, shows the hourly price, launches through SSM and watches. The last launched run is kept
in ``.twostage/last-run`` (JSON, in the current directory) so ``status``/``logs``/``stop`` work
without ``--run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artifacts.run import Run
from trainer.launch import LaunchError
from trainer.launch.outputs import StackOutputs

log = logging.getLogger(__name__)

STATE_FILE = Path(".twostage/last-run")
STOP_KEY = Run.STOP
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- AWS plumbing ----------------------------------------------------------------------------
@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """Credential / endpoint / API errors become one-line :class:`LaunchError`s."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise LaunchError(
            "AWS credentials not found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(or run `aws configure` / `aws sso login`)"
        ) from None
    except NoRegionError:
        raise LaunchError("no AWS region: set AWS_DEFAULT_REGION") from None
    except EndpointConnectionError as err:
        raise LaunchError(f"cannot reach AWS: {err}") from None
    except ClientError as err:
        e = err.response.get("Error", {})
        code, msg = e.get("Code", "?"), e.get("Message", "")
        if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
            raise LaunchError(
                "AWS credentials have expired: log in again (e.g. `aws sso login`)"
            ) from None
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            raise LaunchError(f"AWS denied {err.operation_name}: {msg}") from None
        raise LaunchError(f"AWS {err.operation_name} failed: {code}: {msg}") from None


def clients(outputs: StackOutputs) -> tuple[Any, Any]:
    """(ec2, ssm) clients for the stack's region."""
    import boto3

    session = boto3.session.Session(region_name=outputs.region)
    return session.client("ec2"), session.client("ssm")


# -- run naming and local state --------------------------------------------------------------
def resolve_run_uri(outputs: StackOutputs, run: str | None, *, now: datetime | None = None) -> str:
    """``--run NAME`` → ``<run_prefix>/<NAME>``; an s3:// URI is used as is; None → timestamp."""
    if run and "://" in run:
        if not run.startswith("s3://"):
            raise LaunchError(f"--run {run}: a remote run lives in S3 (s3://...), or give a NAME")
        return run.rstrip("/")
    if not run:
        run = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    if not _NAME.match(run):
        raise LaunchError(f"--run {run!r}: use letters, digits, '.', '_' or '-' (or an s3:// URI)")
    return f"{outputs.run_prefix}/{run}"


@dataclass
class LastRun:
    """What ``.twostage/last-run`` remembers about the last launched run."""

    run_uri: str
    stack: str | None = None
    outputs_file: str | None = None
    launched_at: str = ""
    commands: dict[str, list[str]] = field(default_factory=dict)
    """node index → [command id, instance id] of the latest launch."""


def save_last_run(state: LastRun, path: Path = STATE_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.__dict__, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_last_run(path: Path = STATE_FILE) -> LastRun | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LastRun(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise LaunchError(f"{path} is not a twostage run state file ({err}): delete it") from None


def pick_run(
    outputs: StackOutputs, run: str | None, path: Path = STATE_FILE
) -> tuple[str, LastRun | None]:
    """The run a lifecycle task acts on: ``--run`` or the last launched one."""
    last = load_last_run(path)
    if run:
        uri = resolve_run_uri(outputs, run)
        return uri, last if last and last.run_uri == uri else None
    if last is None:
        raise LaunchError(f"no --run given and no {path}: pass --run NAME")
    return last.run_uri, last


# -- run state from the store -----------------------------------------------------------------
class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# -- the context every lifecycle task builds ---------------------------------------------------
@dataclass
class Context:
    """Outputs plus the adapters built from them (tests inject fakes)."""

    outputs: StackOutputs
    ec2: Any
    ssm: Any
    fleet: Any
    runner_for: Any
    """run_uri → CommandRunner."""

    @classmethod
    def real(cls, outputs: StackOutputs) -> Context:
        from trainer.launch.fleet import Ec2Fleet
        from trainer.launch.ssm import SsmRunner

        ec2, ssm = clients(outputs)
        fleet = Ec2Fleet(
            ec2, ssm, cluster=outputs.cluster_name, launch_template_id=outputs.launch_template_id
        )
        return cls(
            outputs,
            ec2,
            ssm,
            fleet,
            lambda run_uri: SsmRunner(ssm, cluster=outputs.cluster_name, run_uri=run_uri),
        )


def spot_price(ctx: Context) -> float | None:
    """Current spot price of the stack's instance type in its AZ (None if unknown)."""
    from trainer.launch.cost import latest_spot_price

    kwargs: dict[str, Any] = {
        "InstanceTypes": [ctx.outputs.instance_type],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": datetime.now(UTC),
    }
    if ctx.outputs.availability_zone:
        kwargs["AvailabilityZone"] = ctx.outputs.availability_zone
    history = ctx.ec2.describe_spot_price_history(**kwargs).get("SpotPriceHistory", [])
    return latest_spot_price(
        history, ctx.outputs.instance_type, ctx.outputs.availability_zone or None
    )


def check_nodes(ctx: Context) -> dict[int, Any]:
    """Every node index running and (where SSM can tell) SSM-managed, else a one-line error."""
    from trainer.launch.watch import current_nodes

    nodes = current_nodes(ctx.fleet.nodes())
    n = ctx.outputs.node_count
    for i in range(n):
        node = nodes.get(i)
        if node is None:
            raise LaunchError(
                f"node {i} of cluster {ctx.outputs.cluster_name} does not exist: run `pulumi up --refresh`"
            )
        if node.state != "running":
            raise LaunchError(
                f"node {i} ({node.instance_id}) is {node.state}, not running: "
                "run `pulumi up --refresh` to recreate it"
            )
        if node.ssm_online is False:
            raise LaunchError(
                f"node {i} ({node.instance_id}) is not managed by SSM (agent not online): wait a few "
                "minutes after `pulumi up`; check its role has AmazonSSMManagedInstanceCore"
            )
    if any(nodes[i].ssm_online is None for i in range(n)):
        log.warning("could not verify SSM registration; an unmanaged node will show as undelivered")
    return {i: nodes[i] for i in range(n)}


def refuse_if_running(ctx: Context, run_uri: str, last: LastRun | None) -> None:
    """A second launch of a run whose commands still run would start a second trainer per node."""
    from trainer.launch.watch import TERMINAL_COMMAND

    if last is None or last.run_uri != run_uri:
        return
    runner = ctx.runner_for(run_uri)
    for index, (cid, iid) in sorted(last.commands.items()):
        status = runner.poll(cid, iid).status
        if status not in TERMINAL_COMMAND and status != "Pending":
            raise LaunchError(
                f"{run_uri} is still running on node {index} (command {cid} {status}): follow it "
                "with `invoke status` / `invoke logs --follow`, or `invoke stop` it first"
            )


def make_watcher(
    ctx: Context,
    run_uri: str,
    run: Run,
    *,
    launcher: str = "deepspeed",
    public_key: str | None = None,
    policy: Any = None,
    clock: Any = None,
    on_launch: Any = None,
    price: float | None = None,
) -> Any:
    """The :class:`Watcher` for this run with the real or injected ports."""
    from trainer.launch.cost import cost_report
    from trainer.launch.ranks import make_spec, node_scripts, stop_script
    from trainer.launch.watch import Watcher

    o = ctx.outputs
    if price is None and o.spot:
        price = spot_price(ctx)

    def scripts_for(assignments: list) -> dict[int, str]:
        spec = make_spec(run_uri, assignments, instance_type=o.instance_type, launcher=launcher)
        return node_scripts(spec, assignments)

    def cost_for(spans: list, now: float) -> Any:
        return cost_report(
            spans, now=now, instance_type=o.instance_type, spot=o.spot, spot_price=price
        )

    return Watcher(
        run_uri=run_uri,
        node_count=o.node_count,
        runner=ctx.runner_for(run_uri),
        fleet=ctx.fleet,
        run_state=run,
        clock=clock or SystemClock(),
        scripts_for=scripts_for,
        stop_script=stop_script(),
        cost_for=cost_for,
        policy=policy,
        public_key=public_key,
        on_launch=on_launch,
    )


def pretrain_remote(
    ctx: Context,
    *,
    config: Path,
    run: str | None,
    watch: bool = True,
    launcher: str = "deepspeed",
    public_key: str | None = None,
    stack: str | None = None,
    outputs_file: str | None = None,
    state_path: Path = STATE_FILE,
    policy: Any = None,
    clock: Any = None,
) -> tuple[str, Any]:
    """Upload, launch, and (with ``watch``) follow the run. Returns (run URI, Outcome or None)."""
    from trainer.launch.cost import hourly_line
    from trainer.launch.upload import upload_run_config

    o = ctx.outputs
    run_uri = resolve_run_uri(o, run)
    with aws_errors():
        check_nodes(ctx)
        refuse_if_running(ctx, run_uri, load_last_run(state_path))
        run_ = Run(run_uri)
        store = run_.store
        upload_run_config(Path(config), run_)
        if store.exists(STOP_KEY):
            store.delete([STOP_KEY])  # a new launch lifts an earlier `invoke stop`
        price = spot_price(ctx) if o.spot else None
        log.info(
            "%s",
            hourly_line(
                o.instance_type, o.node_count, spot=o.spot, spot_price=price, az=o.availability_zone
            ),
        )
        state = LastRun(
            run_uri, stack, outputs_file, datetime.now(UTC).isoformat(timespec="seconds")
        )

        def on_launch(commands: dict[int, tuple[str, str]]) -> None:
            state.commands = {str(i): [c, iid] for i, (c, iid) in commands.items()}
            save_last_run(state, state_path)

        watcher = make_watcher(
            ctx,
            run_uri,
            run_,
            launcher=launcher,
            public_key=public_key,
            policy=policy,
            clock=clock,
            on_launch=on_launch,
            price=price,
        )
        watcher.launch()
        log.info("launched %s on %d node(s)", run_uri, o.node_count)
        if not watch:
            return run_uri, None
        return run_uri, watcher.watch(launch=False)
