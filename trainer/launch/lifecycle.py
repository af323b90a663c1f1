"""`invoke status`, `invoke logs` and `invoke stop` for a cluster run: bucket reads (and one write).

They work from any machine that has the stack outputs and read access to the bucket: the
controller's state and heartbeat (``control/``), the run's STATUS, checkpoints and the command
output SSM copies to ``<run>/logs/``, the group's instances. ``invoke stop`` writes the run's stop
marker; the controller does the rest (SIGTERM, the trainer commits, desired capacity 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from artifacts.manifest import MANIFEST_NAME
from artifacts.run import Run, RunState
from trainer.checkpoint.schedule import at_risk_line
from trainer.launch import LaunchError
from trainer.launch.ports import SystemClock
from trainer.launch.submit import (
    HEARTBEAT_STALE_S,
    STOP_KEY,
    Context,
    aws_errors,
    follow,
    prices,
)


def trend(history: list[float], last: int = 6) -> str:
    """The last val losses with arrows, e.g. ``3.10 ↓ 2.95 ↓ 2.94 ↑ 2.96``."""
    vals = [float(v) for v in history[-last:]]
    if not vals:
        return "no evaluation yet"
    parts = [f"{vals[0]:.4f}"]
    for prev, cur in zip(vals, vals[1:], strict=False):
        parts += ["↓" if cur < prev else ("↑" if cur > prev else "="), f"{cur:.4f}"]
    return " ".join(parts)


def data_prep_line(prep: dict) -> str:
    """Why no step has happened yet: how far data preparation is (from STATUS.json)."""
    stage = prep.get("stage")
    if stage == "tokenizer":
        return "preparing data: training the tokenizer on a sample of the corpus"
    if stage == "dedup-join":
        return "preparing data: dedup, joining the document keys into duplicate clusters"
    done, total = prep.get("bytes_done", 0), prep.get("bytes_total", 0) or 1
    eta = prep.get("eta_s")
    what = {"dedup-scan": "dedup scan", "committed": "committed"}.get(stage or "", "tokenizing")
    return (
        f"preparing data ({what}): {100 * done / total:.1f}% of {total / 1e9:.2f} GB, "
        f"{prep.get('mb_per_s', 0):.1f} MB/s, {prep.get('tokens_per_s', 0):,} tokens/s, "
        f"ETA {'?' if eta is None else f'{eta / 60:.0f} min'}"
    )


def sample_line(sample: dict) -> str:
    """The newest sample generation (``[eval] sample_prompts``) as one line (pure)."""
    text = " ".join(str(sample.get("text", "")).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"sample at step {sample.get('step', '?')}: {sample.get('prompt', '')!r} -> {text!r}"


def run_status(ctx: Context, run_uri: str, *, now: float | None = None) -> list[str]:
    """What `invoke status` prints."""
    from artifacts.manifest import latest_committed
    from trainer.launch.cost import fleet_cost_report
    from trainer.launch.fleet import spans_of

    now = SystemClock().now() if now is None else now
    lines = [f"run: {run_uri}"]
    with aws_errors():
        run = Run(run_uri)
        store = run.store
        status = run.read_status()
        if status is None:
            lines.append(f"state: submitted (no {Run.STATUS} yet)")
        else:
            lines.append(
                f"state: {status.state} at step {status.global_step}, "
                f"epoch {status.epoch if status.epoch is not None else '?'}, best val loss "
                f"{status.best_val_loss if status.best_val_loss is not None else '?'}"
                f" (updated {status.updated_at or '?'})"
            )
            if status.reason:
                lines.append(f"reason: {status.reason}")
            lines.append(f"val loss: {trend([e['val_loss'] for e in status.val_loss_history])}")
            sample = status.extra.get("latest_sample")
            if isinstance(sample, dict):
                lines.append(sample_line(sample))
            prep = status.extra.get("data_prep")
            if status.state == RunState.PREPARING and isinstance(prep, dict):
                lines.append(data_prep_line(prep))
        listing = store.list(Run.CHECKPOINTS + "/")
        ckpt = latest_committed(listing, prefix=Run.CHECKPOINTS)
        lines.append(f"last committed checkpoint: {ckpt or 'none yet'}")
        if status is None or not status.done:
            lines.append(
                at_risk_line(
                    now,
                    commit_time(listing, ckpt),
                    _iso_ts(status.started_at if status else None),
                )
            )
        if store.exists(f"{Run.FINAL}/{MANIFEST_NAME}"):
            lines.append(f"final model: {run.final_uri}")
        state = ctx.control.state()
        beat = ctx.control.heartbeat_at()
        age = "never" if beat is None else f"{(now - beat) / 60:.1f} min ago"
        if state.run_uri == run_uri:
            lines.append(f"controller: {state.phase}, attempt {state.attempt}; heartbeat {age}")
        else:
            lines.append(f"controller: not on this run (heartbeat {age})")
        members = sorted(ctx.group.members(), key=lambda m: (m.launch_time, m.instance_id))
        live = [m for m in members if m.state in ("pending", "running")]
        for m in live:
            lines.append(
                f"node: {m.instance_id} {m.instance_type} {m.state}/{m.lifecycle} {m.private_ip}"
            )
        lines.append(f"nodes: {len(live)} running in group {ctx.outputs.group_name}")
        if state.run_uri == run_uri and state.outcome and state.outcome.get("cost"):
            cost = state.outcome["cost"]
            lines.append(f"final cost: {cost['node_hours']} node-hours, ${cost['dollars']}")
        else:
            node_prices, _ = prices(ctx)
            started = _submitted_at(ctx, run_uri) or now
            report = fleet_cost_report(spans_of(members, started), now=now, prices=node_prices)
            lines += [f"so far: {line}" for line in report.lines()]
    return lines


def _submitted_at(ctx: Context, run_uri: str) -> float | None:
    request = ctx.control.request()
    return request.submitted_at if request is not None and request.run_uri == run_uri else None


def commit_time(listing: list[Any], folder: str | None) -> float | None:
    """When ``folder`` was committed: the time its ``MANIFEST.json`` was written (from a listing)."""
    if folder is None:
        return None
    key = f"{folder}/{MANIFEST_NAME}"
    return next((o.mtime for o in listing if o.key == key), None)


def _iso_ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def node_logs(ctx: Context, run_uri: str, rank: int | None) -> dict[int, str]:
    """rank → output of the latest launch command on that node (the copy SSM puts in S3)."""
    state = ctx.control.state()
    if state.run_uri != run_uri or not state.commands:
        raise LaunchError(f"no launch of {run_uri} recorded by the controller yet: nothing to show")
    ranks = sorted(int(r) for r in state.commands)
    if rank is not None:
        if rank not in ranks:
            raise LaunchError(f"--node {rank}: the latest launch has ranks {ranks}")
        ranks = [rank]
    store = Run(run_uri).store
    out: dict[int, str] = {}
    with aws_errors():
        for r in ranks:
            cid, iid = state.commands[str(r)]
            keys = [
                o.key
                for o in store.list(f"{Run.LOGS}/{cid}/{iid}/")
                if o.key.endswith(("stdout", "stderr"))
            ]
            text = "".join(
                store.get_bytes(k).decode("utf-8", "replace") for k in sorted(keys, reverse=True)
            )
            # SSM uploads the output when the command ends (or at its 48 h cut).
            out[r] = (
                text
                or f"(no output in S3 yet for command {cid} on {iid}; SSM uploads it when the command ends)\n"
            )
    return out


def launch_done(ctx: Context, run_uri: str) -> bool:
    """Whether the controller is no longer running this run (done or on another)."""
    state = ctx.control.state()
    return state.run_uri != run_uri or state.done


def stop_run(
    ctx: Context,
    run_uri: str,
    *,
    timeout_s: float = 900.0,
    clock: Any = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Ask the controller to stop the run (it commits, then scales to 0); follow until done."""
    clock = clock or SystemClock()
    with aws_errors():
        Run(run_uri).store.put_bytes(STOP_KEY, json.dumps({"requested_at": clock.now()}).encode())
        state, request = ctx.control.state(), ctx.control.request()
    say(f"stop requested for {run_uri}")
    beat = ctx.control.heartbeat_at()
    if beat is None or clock.now() - beat > HEARTBEAT_STALE_S:
        age = "never" if beat is None else f"{(clock.now() - beat) / 60:.0f} min ago"
        say(
            f"warning: the controller's last heartbeat was {age}: the stop waits for it. To end "
            "the billing at once (the trainer gets SIGTERM from EC2 and commits): aws autoscaling "
            f"set-desired-capacity --auto-scaling-group-name {ctx.outputs.group_name} "
            "--desired-capacity 0"
        )
    if request is None or request.run_uri != run_uri:
        say("the controller is not supervising this run: nothing else to do")
        return None
    if state.request_id == request.request_id and state.done:
        say("the run had already ended")
        return state.outcome
    return follow(ctx, request.request_id, clock=clock, say=say, timeout_s=timeout_s)
