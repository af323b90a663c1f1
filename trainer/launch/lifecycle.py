"""`invoke status`, `invoke logs` and `invoke stop` for a remote run."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from artifacts.run import Run
from trainer.launch import LaunchError
from trainer.launch.run import (
    STATE_FILE,
    STOP_KEY,
    Context,
    LastRun,
    SystemClock,
    aws_errors,
    spot_price,
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


def run_status(ctx: Context, run_uri: str) -> list[str]:
    """What `invoke status` prints."""
    from artifacts.manifest import MANIFEST_NAME, latest_committed
    from trainer.launch.cost import InstanceSpan, cost_report

    lines = [f"run: {run_uri}"]
    with aws_errors():
        run = Run(run_uri)
        store = run.store
        status = run.read_status()
        if status is None:
            lines.append(f"state: launched (no {Run.STATUS} yet)")
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
        ckpt = latest_committed(store.list(Run.CHECKPOINTS + "/"), prefix=Run.CHECKPOINTS)
        lines.append(f"last committed checkpoint: {ckpt or 'none yet'}")
        if store.exists(f"{Run.FINAL}/{MANIFEST_NAME}"):
            lines.append(f"final model: {run.final_uri}")
        nodes = sorted(ctx.fleet.nodes(), key=lambda n: (n.index, n.launch_time))
        for n in nodes:
            ssm = {True: ", SSM online", False: ", SSM offline", None: ""}[n.ssm_online]
            lines.append(f"node {n.index}: {n.instance_id} {n.state} {n.private_ip}{ssm}")
        if not nodes:
            lines.append(f"nodes: none in cluster {ctx.outputs.cluster_name}")
        started = _iso_ts(status.started_at) if status else None
        spans = [
            InstanceSpan(n.instance_id, max(n.launch_time, started or 0.0), n.end_time)
            for n in nodes
            if n.end_time is None or started is None or n.end_time > started
        ]
        o = ctx.outputs
        report = cost_report(
            spans,
            now=time.time(),
            instance_type=o.instance_type,
            spot=o.spot,
            spot_price=spot_price(ctx) if o.spot else None,
        )
        lines += [f"so far: {line}" for line in report.lines()]
    return lines


def _iso_ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def node_logs(ctx: Context, run_uri: str, last: LastRun | None, node: int | None) -> dict[int, str]:
    """node index → output of its latest launch command (S3 copy when present, else SSM's)."""
    from artifacts.store import open_store

    if last is None or not last.commands:
        raise LaunchError(f"no launch of {run_uri} recorded in {STATE_FILE}: nothing to show")
    wanted = sorted(int(i) for i in last.commands)
    if node is not None:
        if node not in wanted:
            raise LaunchError(f"--node {node}: the run has nodes {wanted}")
        wanted = [node]
    store = open_store(run_uri)
    runner = ctx.runner_for(run_uri)
    out: dict[int, str] = {}
    with aws_errors():
        for i in wanted:
            cid, iid = last.commands[str(i)]
            keys = [
                o.key
                for o in store.list(f"logs/{cid}/{iid}/")
                if o.key.endswith(("stdout", "stderr"))
            ]
            if keys:
                out[i] = "".join(
                    store.get_bytes(k).decode("utf-8", "replace")
                    for k in sorted(keys, reverse=True)
                )
                continue
            inv = runner.invocation(cid, iid) or {}
            out[i] = (inv.get("StandardOutputContent") or "") + (
                inv.get("StandardErrorContent") or ""
            )
            out[i] = out[i] or f"(no output yet; command {cid} is {inv.get('Status', 'pending')})\n"
    return out


def command_done(ctx: Context, run_uri: str, last: LastRun, node: int) -> bool:
    """Whether the node's latest launch command has ended."""
    from trainer.launch.watch import TERMINAL_COMMAND

    cid, iid = last.commands[str(node)]
    with aws_errors():
        return ctx.runner_for(run_uri).poll(cid, iid).status in TERMINAL_COMMAND


def stop_run(
    ctx: Context, run_uri: str, *, terminate: bool, timeout_s: float = 600.0, clock: Any = None
) -> list[str]:
    """Graceful stop: mark the run stopped, SIGTERM the trainers, wait for them, maybe terminate."""
    from artifacts.store import open_store
    from trainer.launch.ranks import exit_code_key, stop_script

    clock = clock or SystemClock()
    lines: list[str] = []
    with aws_errors():
        store = open_store(run_uri)
        requested = clock.now()
        store.put_bytes(STOP_KEY, json.dumps({"requested_at": requested}).encode())
        ctx.runner_for(run_uri).send_all(stop_script(), comment="twostage stop")
        lines.append(f"sent SIGTERM to the trainer on every node of {ctx.outputs.cluster_name}")
        keys = [exit_code_key(i) for i in range(ctx.outputs.node_count)]
        deadline = requested + timeout_s
        while True:
            # A node records its exit code after the trainer committed and exited.
            fresh = {
                o.key for o in store.list("logs/") if o.key in keys and o.mtime >= requested - 5
            }
            if len(fresh) == len(keys):
                codes = sorted({store.get_bytes(k).decode().strip() for k in keys})
                lines.append(f"trainer exited on every node (exit code {', '.join(codes)})")
                break
            if clock.now() >= deadline:
                lines.append(f"the trainer did not confirm its exit within {timeout_s:.0f} s")
                break
            clock.sleep(10.0)
        if terminate:
            ids = ctx.fleet.terminate_all()
            lines.append(f"terminated {len(ids)} node(s); `pulumi up --refresh` brings them back")
        else:
            lines.append(
                "nodes left running (billing continues): `invoke stop --terminate` ends them"
            )
        lines.append(f"resume: invoke pretrain --run {run_uri}")
    return lines
