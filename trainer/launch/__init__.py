"""Remote launch of stage 1: stack outputs → per-node commands over SSM → watch, recover, finish.

Import-light on purpose (`invoke --list` imports the cli module): boto3 and friends are imported
inside the functions that use them. Modules, one concern each:

- :mod:`.outputs`  stack outputs (`pulumi stack output --json` or a JSON file), validated.
- :mod:`.ranks`    pure: node ranks, rendezvous, EFA/NCCL env, the per-node shell script.
- :mod:`.cost`     pure: spot price, node-hours, dollars.
- :mod:`.ssm`      thin SSM Run Command adapter (tag targets, output to the bucket).
- :mod:`.fleet`    thin EC2 adapter: describe nodes by tag, replace a lost node, terminate.
- :mod:`.watch`    the watch / recovery state machine over injected ports.
- :mod:`.upload`   run config + local data to the run prefix.
- :mod:`.run`      `invoke pretrain` orchestration and what the lifecycle tasks share.
- :mod:`.lifecycle` `invoke status`, `logs`, `stop`.
- :mod:`.cli`      the invoke tasks.
"""

from __future__ import annotations

from artifacts.errors import UserError


class LaunchError(UserError):
    """A remote-launch failure the user can fix (stack, credentials, nodes, config); one line."""
