"""`invoke pretrain` on the cluster: submit the run to the controller, then (optionally) follow it.

Submitting validates the recipe with the trainer's own loader, uploads it (and local data) to the
run prefix, prints the hourly price of the capacity, and writes ``control/request.json``
(:mod:`trainer.launch.control`). From then on the controller in the cloud owns the run: a closed
laptop, a killed ``invoke`` or Ctrl-C changes nothing. Following only *reads* the bucket (the
controller's state, the run's STATUS). The submitted run is remembered for ``status``/``logs``/
``stop`` (:mod:`trainer.launch.last_run`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artifacts.node import NODE_LOCK, locked_distributions
from artifacts.run import Run
from trainer.launch import LaunchError
from trainer.launch.last_run import (
    STATE_FILE,
    LastRun,
    resolve_run_uri,
    save_last_run,
)
from trainer.launch.outputs import StackOutputs
from trainer.launch.ports import SystemClock

log = logging.getLogger(__name__)

STOP_KEY = Run.STOP
HEARTBEAT_STALE_S = 5 * 60.0


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


# -- run naming and local state --------------------------------------------------------------
# -- the context every task builds --------------------------------------------------------------
@dataclass
class Context:
    """Outputs plus the adapters built from them (tests inject fakes or moto clients)."""

    outputs: StackOutputs
    ec2: Any
    group: Any
    """:class:`trainer.launch.group.Group` (read-only use on the laptop)."""
    control: Any
    """:class:`trainer.launch.control.ControlPlane` on the bucket."""

    @classmethod
    def real(cls, outputs: StackOutputs) -> Context:
        import boto3

        from artifacts.store import open_store
        from trainer.launch.control import ControlPlane
        from trainer.launch.group import Group

        session = boto3.session.Session(region_name=outputs.region)
        ec2 = session.client("ec2")
        group = Group(session.client("autoscaling"), ec2, None, name=outputs.group_name)
        return cls(outputs, ec2, group, ControlPlane(open_store(f"s3://{outputs.bucket}")))


def spot_history(ec2: Any, instance_types: tuple[str, ...] | list[str], az: str = "") -> list:
    """Recent spot prices of the types (in the AZ when given)."""
    kwargs: dict[str, Any] = {
        "InstanceTypes": list(instance_types),
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": datetime.now(UTC),
    }
    if az:
        kwargs["AvailabilityZone"] = az
    return ec2.describe_spot_price_history(**kwargs).get("SpotPriceHistory", [])


def prices(ctx: Context) -> tuple[dict[str, Any], Any]:
    """(price per allowed node type, controller price), each naming its source."""
    from trainer.launch.cost import price_for

    o = ctx.outputs
    history = spot_history(ctx.ec2, o.instance_types, o.availability_zone) if o.spot else []
    nodes = {
        t: price_for(t, spot=o.spot, history=history, availability_zone=o.availability_zone or None)
        for t in o.instance_types
    }
    return nodes, price_for(o.controller_instance_type, spot=False)


def estimate(ctx: Context, node_count: int) -> list[str]:
    """The lines printed before a submit: what the capacity costs per hour while it runs."""
    from trainer.launch.cost import estimate_lines

    node_prices, controller_price = prices(ctx)
    return estimate_lines(
        node_count,
        node_prices,
        spot=ctx.outputs.spot,
        controller_type=ctx.outputs.controller_instance_type,
        controller_price=controller_price,
    )


# -- submit and follow ----------------------------------------------------------------------------
def make_request(
    outputs: StackOutputs,
    run_uri: str,
    config: Path,
    *,
    launcher: str,
    public_key: str | None,
    now: float,
    node_lock: Path = NODE_LOCK,
    say: Callable[[str], None] = print,
) -> Any:
    """The :class:`~trainer.launch.control.RunRequest` for this recipe's ``[run]`` policy."""
    from trainer.config import load_config
    from trainer.launch.control import RunRequest
    from trainer.loop.reporting import cluster_notes, egress_refusal, lock_refusal

    cfg = load_config(config)
    rc = cfg.run
    names, source = cfg.eval.report_to, str(config)
    refusal = None if outputs.allow_internet_egress else egress_refusal(names, source=source)
    if refusal is None and names:  # the nodes' packages: else the Trainer raises on paid nodes
        refusal = lock_refusal(names, _locked(node_lock), source=source)
    if refusal:
        raise LaunchError(refusal)
    if rc.min_nodes is not None and rc.min_nodes > outputs.node_count:
        raise LaunchError(
            f"run.min_nodes = {rc.min_nodes} in {config}, but the cluster has "
            f"{outputs.node_count} node(s): lower it or `pulumi config set twostage:nodeCount`"
        )
    request = RunRequest(
        request_id=f"{datetime.fromtimestamp(now, UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
        run_uri=run_uri,
        submitted_at=now,
        node_count=outputs.node_count,
        min_nodes=rc.min_nodes,
        launcher=launcher,
        idle_timeout_s=rc.idle_timeout_minutes * 60.0,
        stall_timeout_s=rc.stall_timeout_minutes * 60.0,
        max_hours=rc.max_hours,
        max_dollars=rc.max_dollars,
        public_key=public_key,
    )
    for line in cluster_notes(names):
        say(line)
    return request


def _locked(lock: Path) -> frozenset[str]:
    """The distributions the nodes install: this checkout's lock (``invoke wheelhouse`` builds
    from it what ``pulumi up`` ships; a lock changed since the last ``pulumi up`` is not there yet)."""
    try:
        return locked_distributions(lock.read_text(encoding="utf-8"))
    except OSError as err:
        raise LaunchError(
            f"cannot read the nodes' lock {lock} ({err.strerror or err}): run `invoke pretrain` "
            "from the project's checkout"
        ) from None


def submit(
    ctx: Context,
    *,
    config: Path,
    run: str | None,
    launcher: str = "deepspeed",
    public_key: str | None = None,
    stack: str | None = None,
    outputs_file: str | None = None,
    state_path: Path = STATE_FILE,
    clock: Any = None,
    say: Callable[[str], None] = print,
    node_lock: Path = NODE_LOCK,
) -> Any:
    """Upload the run and hand it to the controller; returns the request (nothing waits).

    ``node_lock``: what the nodes install (a recipe's ``report_to`` packages are checked in it).
    """
    from trainer.launch.upload import upload_run_config

    clock = clock or SystemClock()
    o = ctx.outputs
    run_uri = resolve_run_uri(o, run)
    request = make_request(
        o, run_uri, Path(config), launcher=launcher, public_key=public_key, now=clock.now(),
        node_lock=node_lock, say=say,
    )  # fmt: skip
    with aws_errors():
        current, state = ctx.control.request(), ctx.control.state()
        if current is not None and not (state.request_id == current.request_id and state.done):
            raise LaunchError(
                f"the cluster is busy with {current.run_uri} (phase {state.phase}): follow it with "
                f"`invoke status --run {current.run_uri}` or `invoke stop --run {current.run_uri}`"
            )
        run_ = Run(run_uri)
        upload_run_config(Path(config), run_)
        if run_.stop_requested():
            run_.store.delete([STOP_KEY])  # a new submit lifts an earlier `invoke stop`
        for line in estimate(ctx, o.node_count):
            say(line)
        ctx.control.submit(request)
    save_last_run(
        LastRun(run_uri, stack, outputs_file, datetime.now(UTC).isoformat(timespec="seconds"),
                request.request_id),
        state_path,
    )  # fmt: skip
    say(f"submitted {run_uri} to the controller (request {request.request_id})")
    return request


def follow(
    ctx: Context,
    request_id: str,
    *,
    clock: Any = None,
    poll_s: float = 30.0,
    say: Callable[[str], None] = print,
    timeout_s: float | None = None,
) -> dict[str, Any] | None:
    """Print the controller's progress until the request is done; returns its outcome dict.

    Only reads the bucket, so stopping this (Ctrl-C, a closed laptop) never touches the run.
    """
    clock = clock or SystemClock()
    start, last_line, warned = clock.now(), "", False
    while True:
        with aws_errors():
            state = ctx.control.state()
            beat = ctx.control.heartbeat_at()
        if state.request_id == request_id:
            line = f"controller: {state.phase}, attempt {state.attempt}" + (
                f" ({_detail(state.detail)})" if state.detail else ""
            )
            if line != last_line:
                say(line)
                last_line = line
            if state.done:
                return state.outcome
        elif clock.now() - start > 120 and not warned:
            say("controller has not picked the request up yet (it checks every poll, 10 s by default)")
            warned = True
        if beat is not None and clock.now() - beat > HEARTBEAT_STALE_S and not warned:
            say(
                f"warning: the controller's heartbeat is {(clock.now() - beat) / 60:.0f} min old "
                "(is it running? `aws ssm start-session --target <controller_instance_id>`)"
            )
            warned = True
        if timeout_s is not None and clock.now() - start >= timeout_s:
            return None
        clock.sleep(poll_s)


def _detail(detail: dict[str, Any]) -> str:
    keys = ("why", "step", "in_service", "wanted", "rendezvous")
    return ", ".join(f"{k} {detail[k]}" for k in keys if detail.get(k) is not None)
