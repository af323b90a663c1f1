"""twostage — the user's front door. `invoke --list` shows every task; `invoke --help TASK` its flags.

Each package keeps its own tasks in its ``cli`` module (thin: parse flags, call the library, turn
user errors into exit 2). This file only assembles them, so importing it stays instant: torch,
transformers, deepspeed and pulumi are imported inside the task bodies.
"""

from __future__ import annotations

from invoke import Collection

from artifacts import cli as artifacts_cli
from demo import cli as demo_cli
from infra import cli as infra_cli
from local import cli as local_cli
from local import crypto_cli, use_cli
from trainer import cli as trainer_cli
from trainer.launch import cli as launch_cli

ns = Collection()
for _mod in (
    artifacts_cli, trainer_cli, launch_cli, local_cli, crypto_cli, use_cli, demo_cli, infra_cli
):
    for _task in _mod.TASKS:
        ns.add_task(_task)
