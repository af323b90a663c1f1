"""Invoke tasks for stage 1 on the cluster: pretrain, status, logs, stop.

Thin: parse flags, call :mod:`trainer.launch.run`, print what the user reads. Every lifecycle
task finds the cluster through ``--outputs FILE`` (JSON of ``pulumi stack output --json``) or
``--stack NAME`` (default: the selected Pulumi stack), and the run through ``--run NAME`` or the
last launched run remembered in ``.twostage/last-run``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from artifacts.cli_support import user_errors

_WHERE = {
    "stack": "Pulumi stack to read outputs from (default: the selected stack)",
    "outputs": "JSON file with the stack outputs (`pulumi stack output --json > FILE`); wins over --stack",
}


def _context(stack: str | None, outputs: str | None):
    from artifacts.logs import init_logging
    from trainer.launch.outputs import load_outputs
    from trainer.launch.run import Context, aws_errors

    init_logging()
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # "Found credentials in ..." etc.
    o = load_outputs(stack=stack, outputs_file=outputs)
    with aws_errors():
        return Context.real(o)


@task(
    help={
        **_WHERE,
        "config": "run recipe TOML (default configs/pretrain-p4d.toml; with --local configs/pretrain-tiny.toml)",
        "run": "run NAME under the stack's run prefix (default: a timestamp); with --local a folder or URI",
        "watch": "follow the run: relaunch after spot loss / exit 75, terminate every node at the end",
        "local": "run here through the DeepSpeed launcher on CPU ranks instead of on the cluster",
        "nproc": "ranks for --local (default 2)",
        "launcher": "per-node launcher on the cluster: deepspeed (--no_ssh) or torchrun",
        "public_key": "public key to name in the printed `invoke download` command",
    }
)
@user_errors
def pretrain(
    c,
    stack=None,
    outputs=None,
    config=None,
    run=None,
    watch=True,
    local=False,
    nproc=2,
    launcher="deepspeed",
    public_key=None,
):
    """Stage 1: launch pretraining on the provisioned nodes over SSM and watch it to the end.

    Reads the stack outputs, checks every node is running and SSM-managed, uploads the run config
    (and local data) to the run prefix, shows the hourly price and launches on every node. With
    --watch (default) it relaunches after a spot loss or exit 75 (the trainer resumes from the
    last committed checkpoint), terminates every node when the run converges, and prints the cost
    and the `invoke download` command. --local runs the same trainer here on CPU ranks.
    """
    if local:
        from artifacts.logs import init_logging
        from artifacts.run import ExitCode
        from trainer.launch.local import launch_local

        init_logging()
        rc = launch_local(Path(config or "configs/pretrain-tiny.toml"), run, nproc=int(nproc))
        if rc == ExitCode.INTERRUPTED:
            raise Exit("interrupted; rerun the same command to resume", code=int(rc))
        if rc != 0:
            raise Exit(f"trainer failed with exit code {rc}", code=rc)
        return
    from trainer.launch.run import pretrain_remote

    ctx = _context(stack, outputs)
    try:
        run_uri, outcome = pretrain_remote(
            ctx,
            config=Path(config or "configs/pretrain-p4d.toml"),
            run=run,
            watch=watch,
            launcher=launcher,
            public_key=public_key,
            stack=stack,
            outputs_file=outputs,
        )
    except KeyboardInterrupt:
        raise Exit(
            "stopped watching; a launched run goes on on the nodes (and bills): "
            "`invoke status`, `invoke logs --follow`, `invoke stop`",
            code=130,
        ) from None
    if outcome is None:
        print(f"launched {run_uri}")
        print("follow it: invoke status | invoke logs --follow | invoke stop")
        print("warning: without --watch nothing relaunches after a spot loss; a failed run")
        print("leaves its nodes running (billing) until `invoke stop`")
        return
    for line in outcome.lines():
        print(line)
    if outcome.state == "failed":
        raise Exit(code=1)


def _index(value: str) -> int:
    from trainer.launch import LaunchError

    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"--node {value}: give a node index (0, 1, ...)") from None


@task(help={**_WHERE, "run": "run NAME or s3:// URI (default: the last launched run)"})
@user_errors
def status(c, stack=None, outputs=None, run=None):
    """Run state (STATUS.json), last committed checkpoint, val-loss trend, nodes, cost so far."""
    from trainer.launch.lifecycle import run_status
    from trainer.launch.run import pick_run

    ctx = _context(stack, outputs)
    run_uri, _ = pick_run(ctx.outputs, run)
    for line in run_status(ctx, run_uri):
        print(line)


@task(
    help={
        **_WHERE,
        "run": "run NAME or s3:// URI (default: the last launched run)",
        "node": "only this node index (default: every node)",
        "follow": "keep printing new output until the command ends",
    }
)
@user_errors
def logs(c, stack=None, outputs=None, run=None, node=None, follow=False):
    """Output of the latest launch command on each node (from <run>/logs/ in S3 or SSM)."""
    from trainer.launch.lifecycle import command_done, node_logs
    from trainer.launch.run import pick_run

    ctx = _context(stack, outputs)
    run_uri, last = pick_run(ctx.outputs, run)
    node = None if node is None else _index(node)
    shown: dict[int, int] = {}
    while True:
        for i, text in node_logs(ctx, run_uri, last, node).items():
            new = text[shown.get(i, 0) :] if len(text) >= shown.get(i, 0) else text
            for line in new.splitlines():
                print(f"[node {i}] {line}")
            shown[i] = len(text)
        if not follow or all(command_done(ctx, run_uri, last, i) for i in shown):
            return
        time.sleep(15)


@task(
    help={
        **_WHERE,
        "run": "run NAME or s3:// URI (default: the last launched run)",
        "terminate": "terminate every node after the trainer exited (default on: no idle spend)",
        "timeout": "seconds to wait for the trainer to commit and exit (default 600)",
    }
)
@user_errors
def stop(c, stack=None, outputs=None, run=None, terminate=True, timeout=600):
    """Graceful stop: SIGTERM to the trainer (it commits a checkpoint, exits 75), then terminate."""
    from trainer.launch.lifecycle import stop_run
    from trainer.launch.run import pick_run

    ctx = _context(stack, outputs)
    run_uri, _ = pick_run(ctx.outputs, run)
    for line in stop_run(ctx, run_uri, terminate=terminate, timeout_s=float(timeout)):
        print(line)


TASKS = [pretrain, status, logs, stop]
