"""Stage 1 on the cluster: submit → the controller in the cloud supervises → nodes at 0.

Import-light on purpose (`invoke --list` imports the cli module): boto3 and friends are imported
inside the functions that use them. Modules, one concern each:

- :mod:`.ports`      the supervision loop's ports: Invocation, Member, protocols, SystemClock.
- :mod:`.outputs`    stack outputs (`pulumi stack output --json` or a JSON file), validated.
- :mod:`.ranks`      pure: node ranks, rendezvous, the shared launch spec, EFA/NCCL env.
- :mod:`.node_script` pure: the bash each node runs for a launch, and the stop signal.
- :mod:`.group`      the nodes' Auto Scaling group (members, desired capacity); pure per-launch ranks.
- :mod:`.cost`       pure: spot price, node-hours, dollars per instance type, price sources.
- :mod:`.deadman`    pure: idle node, stalled run, max hours/dollars decisions.
- :mod:`.ssm`        thin SSM Run Command adapter (instance targets, output to the bucket).
- :mod:`.plan`       pure: `invoke plan` — memory per GPU, checkpoint bytes, notice/recovery time, cost.
- :mod:`.memory`     pure: ZeRO-3 memory per GPU and what would fit instead (the plan's memory half).
- :mod:`.policy`     the supervision policy (timings, bounds) and its Outcome; pure.
- :mod:`.recovery`   wait-or-continue, settle after exit 75, the repeated-failure guard.
- :mod:`.attempt`    one launch attempt: its commands, their verdict, stopping them.
- :mod:`.fleet`      the group's members seen over a run: cost spans, scale to 0 and drain.
- :mod:`.sizing`     how many nodes an attempt runs on: wait, go on with fewer, grow back.
- :mod:`.run_end`    how a run ends: the conditions every poll checks, then stop, record, scale to 0.
- :mod:`.watch`      the supervision state machine over injected ports.
- :mod:`.control`    the control objects in the bucket (request, heartbeat, controller state).
- :mod:`.controller` the service on the controller instance (``python -m``).
- :mod:`.node_agent` the dead-man service on every node (``python -m``).
- :mod:`.upload`     run config + local data to the run prefix.
- :mod:`.submit`     `invoke pretrain`: submit and follow (AWS errors, prices).
- :mod:`.last_run`   which run a task means: `--run`, else `.twostage/last-run`.
- :mod:`.single_node` `invoke pretrain --local`: the DeepSpeed launcher on this machine.
- :mod:`.rank_watch` which rank ended first (both launchers name it in STATUS; ``python -m``).
- :mod:`.lifecycle`  `invoke status`, `logs`, `stop`.
- :mod:`.tensorboard` `invoke tensorboard`: the run's event files fetched incrementally, the viewer.
- :mod:`.cli`        the invoke tasks.
"""

from __future__ import annotations

from artifacts.errors import UserError


class LaunchError(UserError):
    """A remote-launch failure the user can fix (stack, credentials, nodes, config); one line."""
