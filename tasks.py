"""twostage — the user's front door. `invoke --list` shows every task; `invoke --help TASK` its flags.

Each package keeps its own tasks in its ``cli`` module (thin: parse flags, call the library, turn
user errors into exit 2). This file only assembles them, so importing it stays instant: torch,
transformers, deepspeed and pulumi are imported inside the task bodies.
"""

from __future__ import annotations

import importlib

from invoke import Collection

ns = Collection()

# Order is the order `invoke --list` prints within its alphabetical listing; modules that are
# not present yet (a partial checkout) are skipped rather than breaking the whole front door.
for _module in ("artifacts.cli", "trainer.cli", "trainer.launch.cli", "local.cli", "local.crypto_cli", "demo.cli"):
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _err:
        if _err.name and _module.startswith(_err.name):
            continue
        raise
    for _task in getattr(_mod, "TASKS", ()):
        ns.add_task(_task)
