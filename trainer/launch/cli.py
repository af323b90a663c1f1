"""Invoke tasks for stage 1 on the cluster: pretrain, status, logs, stop.

Thin: parse flags, call :mod:`trainer.launch.submit`, print what the user reads. Every lifecycle
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
    from trainer.launch.submit import Context, aws_errors

    init_logging()
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # "Found credentials in ..." etc.
    o = load_outputs(stack=stack, outputs_file=outputs)
    with aws_errors():
        return Context.real(o)


def _print_outcome(outcome: dict | None, run_uri: str) -> None:
    """The controller's final word on a run (from ``control/controller.json``)."""
    if outcome is None:
        return
    print(outcome["message"])
    if outcome.get("left_running"):
        print(f"warning: still running after scale-to-0: {', '.join(outcome['left_running'])}")
    else:
        print("nodes: desired capacity 0, no instance left running")
    cost = outcome.get("cost")
    if cost:
        for row in cost["by_type"]:
            print(
                f"{row['instance_type']}: {row['node_hours']:.2f} node-hours × "
                f"${row['usd_per_hour'] or 0:.4f}/h ({row['price_source']}) = ${row['dollars']}"
            )
        if cost.get("controller"):
            c = cost["controller"]
            print(f"controller {c['instance_type']}: {c['node_hours']:.2f} h = ${c['dollars']}")
        print(f"total: {cost['node_hours']:.2f} node-hours, ${cost['dollars']}")
    if outcome.get("download_command"):
        print(f"stage 2: {outcome['download_command']}")


_DETACHED = (
    "the run goes on in the cloud: `invoke status`, `invoke logs`, `invoke stop` (from any machine)"
)


@task(
    help={
        **_WHERE,
        "config": "run recipe TOML (default configs/pretrain-p4d.toml; with --local configs/pretrain-tiny.toml)",
        "run": "run NAME under the stack's run prefix (default: a timestamp); with --local a folder or URI",
        "detach": "return right after submitting (the controller in the cloud runs it either way)",
        "local": "run here through the DeepSpeed launcher on CPU ranks instead of on the cluster",
        "nproc": "ranks for --local (default 2); a run resumes on any number of ranks (global batch held)",
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
    detach=False,
    local=False,
    nproc=2,
    launcher="deepspeed",
    public_key=None,
):
    """Stage 1: submit pretraining to the cluster's controller and follow it (or --detach).

    Validates the recipe, uploads it (and local data) to the run prefix, prints the hourly price
    of the capacity (spot price per allowed type + the controller) and hands the run to the
    controller instance, which launches it over SSM, relaunches after a spot loss or exit 75,
    goes on with fewer nodes down to run.min_nodes, and scales the nodes to 0 at the end. This
    task then only follows: Ctrl-C or a closed laptop never stops the run (`invoke stop` does).
    --local runs the same trainer here on CPU ranks.
    """
    if local:
        from artifacts.logs import init_logging
        from artifacts.run import ExitCode
        from trainer.launch.single_node import launch_local

        init_logging()
        from trainer.config import load_config
        from trainer.env import run_uri
        from trainer.launch.single_node import resume_hint

        config = Path(config or "configs/pretrain-tiny.toml")
        cfg = load_config(config)
        from trainer.loop.reporting import local_notes

        for line in local_notes(cfg.eval.report_to):
            print(line)
        run = run_uri(cfg.run, run)  # named here for the hint
        rc = launch_local(config, run, nproc=int(nproc), cfg=cfg)
        if rc == ExitCode.INTERRUPTED:
            raise Exit(f"interrupted; resume with: {resume_hint(config, run, nproc)}", code=int(rc))
        if rc != 0:
            raise Exit(
                f"trainer failed with exit code {rc}; resume with: "
                f"{resume_hint(config, run, nproc)}",
                code=rc,
            )
        return
    from trainer.launch.submit import follow, submit

    ctx = _context(stack, outputs)
    config = Path(config or "configs/pretrain-p4d.toml")
    for line in _cluster_plan(ctx, config):  # refuses (exit 2) before any node starts
        print(line)
    request = submit(
        ctx,
        config=config,
        run=run,
        launcher=launcher,
        public_key=public_key,
        stack=stack,
        outputs_file=outputs,
    )
    if detach:
        print(_DETACHED)
        return
    try:
        outcome = follow(ctx, request.request_id)
    except KeyboardInterrupt:
        raise Exit(f"stopped following; {_DETACHED}", code=130) from None
    _print_outcome(outcome, request.run_uri)
    if outcome is not None and outcome["state"] == "failed":
        raise Exit(code=1)


def _cluster_plan(ctx, config: Path) -> list[str]:
    """The plan of ``config`` on the stack's nodes at the current spot price; refused if unfit.

    With several allowed types the one with the least GPU memory is planned (the group may
    launch any of them); a type the plan has no numbers for is said, not guessed.
    """
    from trainer.config import load_config
    from trainer.launch.plan import INSTANCE_TYPES, plan_recipe, require_fit
    from trainer.launch.submit import aws_errors, prices

    cfg = load_config(config)
    known = [t for t in ctx.outputs.instance_types if t in INSTANCE_TYPES]
    if not known:
        return [f"plan: no hardware numbers for {', '.join(ctx.outputs.instance_types)}: "
                "memory per GPU not checked"]  # fmt: skip
    itype = min(known, key=lambda t: INSTANCE_TYPES[t].gpu_gb)
    with aws_errors():
        node_prices, _ = prices(ctx)
    price = node_prices.get(itype)
    return require_fit(
        plan_recipe(
            cfg,
            nodes=ctx.outputs.node_count,
            instance_type=itype,
            usd_per_node_hour=getattr(price, "usd_per_hour", None),
            price_source=getattr(price, "source", "no price"),
        )
    ).lines()


@task(
    help={
        "config": "run recipe TOML (default configs/pretrain-p4d.toml)",
        "nodes": "nodes to plan for (default 1)",
        "instance_type": "node type: p4d.24xlarge (default), p4de.24xlarge, p5.48xlarge",
        "price": "USD per node-hour (default: the built-in on-demand list price; "
        "`invoke pretrain` uses the current spot price)",
        "json": "print the plan as JSON",
    }
)
@user_errors
def plan(c, config="configs/pretrain-p4d.toml", nodes=1, instance_type="p4d.24xlarge",
         price=None, json=False):  # fmt: skip
    """A plan before you pay: memory per GPU, checkpoint bytes, notice and recovery time, cost.

    Pure arithmetic from the recipe (trainer/launch/plan.py states every input): ZeRO-3 model
    states (16 B/param over the GPUs) + activations at the recipe's micro-batch, sequence length
    and gradient checkpointing; checkpoint 12 B/param; spot notice -> commit; node lost ->
    training again; $/h and $ per 1B tokens. A recipe that cannot fit is refused with the numbers
    and what would fit (exit 2). `invoke pretrain` makes the same check before any node starts.
    """
    import json as _json

    from trainer.config import load_config
    from trainer.launch.cost import on_demand_quote
    from trainer.launch.plan import deepspeed_estimate_gb, plan_recipe, require_fit, shape_of

    cfg = load_config(Path(config))
    if price is None:
        usd, source = on_demand_quote(instance_type)
    else:
        usd, source = float(price), "--price"
    p = plan_recipe(
        cfg, nodes=int(nodes), instance_type=instance_type, usd_per_node_hour=usd,
        price_source=source,
    )  # fmt: skip
    if json:
        print(_json.dumps(p.to_dict(), indent=2))
    else:
        for line in p.lines():
            print(line)
        from trainer.launch.plan import INSTANCE_TYPES

        ds = deepspeed_estimate_gb(
            shape_of(cfg), gpus_per_node=INSTANCE_TYPES[instance_type].gpus, nodes=int(nodes)
        )
        if ds is not None:
            print(f"cross-check: DeepSpeed's estimator says {ds:.1f} GB of model states per GPU")
    require_fit(p)


def _index(value: str) -> int:
    from trainer.launch import LaunchError

    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"--node {value}: give a node rank (0, 1, ...)") from None


@task(help={**_WHERE, "run": "run NAME or s3:// URI (default: the last submitted run)"})
@user_errors
def status(c, stack=None, outputs=None, run=None):
    """Run state (STATUS.json), checkpoint, val-loss trend, controller phase, nodes, cost so far."""
    from trainer.launch.last_run import pick_run
    from trainer.launch.lifecycle import run_status

    ctx = _context(stack, outputs)
    for line in run_status(ctx, pick_run(ctx.outputs, run)):
        print(line)


@task(
    help={
        **_WHERE,
        "run": "run NAME or s3:// URI (default: the last submitted run)",
        "node": "only this rank of the latest launch (default: every node)",
        "follow": "keep printing new output until the controller is done with the run",
    }
)
@user_errors
def logs(c, stack=None, outputs=None, run=None, node=None, follow=False):
    """Output of the latest launch command on each node (the copy SSM writes to <run>/logs/)."""
    from trainer.launch.last_run import pick_run
    from trainer.launch.lifecycle import launch_done, node_logs

    ctx = _context(stack, outputs)
    run_uri = pick_run(ctx.outputs, run)
    rank = None if node is None else _index(node)
    shown: dict[int, int] = {}
    while True:
        for i, text in node_logs(ctx, run_uri, rank).items():
            new = text[shown.get(i, 0) :] if len(text) >= shown.get(i, 0) else text
            for line in new.splitlines():
                print(f"[node {i}] {line}")
            shown[i] = len(text)
        if not follow or launch_done(ctx, run_uri):
            return
        time.sleep(15)


@task(
    help={
        **_WHERE,
        "run": "run NAME or s3:// URI (default: the last submitted run)",
        "timeout": "seconds to follow the controller's stop (default 900; it goes on regardless)",
    }
)
@user_errors
def stop(c, stack=None, outputs=None, run=None, timeout=900):
    """Graceful stop: the controller SIGTERMs the trainer (it commits), then scales the nodes to 0."""
    from trainer.launch.last_run import pick_run
    from trainer.launch.lifecycle import stop_run

    ctx = _context(stack, outputs)
    run_uri = pick_run(ctx.outputs, run)
    outcome = stop_run(ctx, run_uri, timeout_s=float(timeout))
    _print_outcome(outcome, run_uri)
    print(f"resume: invoke pretrain --run {run_uri}")


TASKS = [plan, pretrain, status, logs, stop]
