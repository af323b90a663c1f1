"""The run protocol: one definition of a run's layout, its status, its exit codes and its verdict.

A *run* is a prefix in a store (``s3://bucket/runs/<name>`` or a local folder). Everything that
reads or writes a run — the trainer on every rank, the per-node script, the launcher on the laptop,
the watcher, the demo, the benchmarks — builds a :class:`Run` once and asks it for paths, reads
``STATUS.json`` as a :class:`Status`, and decides what a rank's exit means with :func:`verdict`.
Nothing else spells out ``"STATUS.json"``, ``"checkpoints"`` or the number 75 (a test checks it).

This module is the protocol's front door and owns the layout; the rest lives in a module per idea
and is re-exported here, so callers import every name from ``artifacts.run``:

- :mod:`artifacts.status`: ``STATUS.json`` as a :class:`Status` (:class:`RunState`, ``now_iso``,
  the ``reason`` of a notice or a stop);
- :mod:`artifacts.verdict`: :class:`ExitCode` and :func:`verdict`, what an exit means;
- here: :class:`Run` (the layout below, the store, reading and writing the status), step folder
  names, and the ``verdict`` command.

Pure and light: importing this module imports no torch, boto3 or trainer code, so the node script
can call ``python -m artifacts.run verdict RC RUN_URI`` and the laptop can read a run's state.

Layout under the run prefix::

    config.toml                     the run's recipe (written by the launcher)
    data/                           uploaded corpus files (``data.train_files = ["run:data/"]``)
    cache/data/                     tokenizer + token cache (committed with a manifest)
    checkpoints/step-0000000040/    committed checkpoints (MANIFEST.json last)
    universal/step-0000000040/      the fallback: that checkpoint converted for another world size
    final/                          the published model (MANIFEST.json, optional .sig)
    STATUS.json                     :class:`Status`, rank 0 / launcher writes it
    logs/node-<i>/exit_code         the verdict of each node's launcher exit (what the node exits with)
    control/stop                    ``invoke stop`` asked the run to end
    cost.json                       the controller's final cost report (per instance type)
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from artifacts.exits import describe_exit, exit_signal
from artifacts.status import NOTICE_REASON, STOP_REASON, RunState, Status, now_iso
from artifacts.verdict import ExitCode, verdict

if TYPE_CHECKING:  # pragma: no cover - typing only
    from artifacts.store_api import Store

__all__ = [
    "NOTICE_REASON",
    "RUN_REF",
    "STOP_REASON",
    "ExitCode",
    "Run",
    "RunState",
    "Status",
    "default_run_uri",
    "now_iso",
    "step_folder",
    "step_of",
    "verdict",
    "verdict_cli",
]


_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def step_folder(step: int) -> str:
    """``step-0000000040``: zero-padded so plain and natural sort orders agree."""
    if step < 0:
        raise ValueError(f"a global step is >= 0, got {step}")
    return f"step-{step:010d}"


def step_of(name: str) -> int | None:
    """The global step of a ``step-…`` folder name (last path component), else None."""
    m = _STEP_FOLDER.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def default_run_uri(name: str) -> str:
    """A fresh folder under ``runs/`` (used when neither ``--run`` nor ``[run] uri`` is given)."""
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


RUN_REF = "run:"
"""Prefix of a config value that names a path under the run (``run:data/``)."""


@dataclass(frozen=True)
class Run:
    """A run prefix and every path of its layout. Build it once from the URI and pass it around."""

    uri: str

    # Keys relative to the run prefix (the layout, in one place).
    CONFIG = "config.toml"
    DATA = "data"
    CACHE = "cache"
    CACHE_DATA = "cache/data"
    CHECKPOINTS = "checkpoints"
    UNIVERSAL = "universal"
    FINAL = "final"
    STATUS = "STATUS.json"
    LOGS = "logs"
    TENSORBOARD = "logs/tensorboard"
    """Rank 0's TensorBoard event files, committed in the background (``trainer.loop.metrics``)."""
    STOP = "control/stop"
    COST = "cost.json"
    """The controller's final cost report: node-hours and dollars per instance type."""

    def __post_init__(self) -> None:
        if not self.uri or not self.uri.strip():
            raise ValueError("a run URI is empty")
        object.__setattr__(self, "uri", self.uri.rstrip("/") or "/")

    # -- store access ---------------------------------------------------------------------
    @cached_property
    def store(self) -> Store:
        """The run prefix's store, opened (and its URI parsed) once."""
        from artifacts.store import open_store

        return open_store(self.uri)

    def child_uri(self, key: str) -> str:
        return self.store.child_uri(key)

    # -- layout ---------------------------------------------------------------------------
    def checkpoint(self, step: int) -> str:
        """Key of the checkpoint folder of ``step``."""
        return f"{self.CHECKPOINTS}/{step_folder(step)}"

    def universal_checkpoint(self, step: int) -> str:
        """Key of the universal (world-size-independent) form of checkpoint ``step``."""
        return f"{self.UNIVERSAL}/{step_folder(step)}"

    @property
    def checkpoints_uri(self) -> str:
        return self.child_uri(self.CHECKPOINTS)

    @property
    def final_uri(self) -> str:
        return self.child_uri(self.FINAL)

    @property
    def cache_data_uri(self) -> str:
        return self.child_uri(self.CACHE_DATA)

    @property
    def data_uri(self) -> str:
        return self.child_uri(self.DATA)

    def data_key(self, index: int, name: str) -> str:
        """Where the launcher uploads the ``index``-th local corpus file."""
        return f"{self.DATA}/{index:04d}-{name}"

    @classmethod
    def node_logs(cls, node: int) -> str:
        return f"{cls.LOGS}/node-{node}"

    @classmethod
    def exit_code(cls, node: int) -> str:
        """Key where node ``node`` records its trainer's exit code."""
        return f"{cls.node_logs(node)}/exit_code"

    def resolve(self, spec: str) -> str:
        """``run:REL`` → the URI of REL under this run; anything else unchanged."""
        if spec.startswith(RUN_REF):
            return self.child_uri(spec[len(RUN_REF) :].strip("/"))
        return spec

    # -- status ---------------------------------------------------------------------------
    def read_status(self) -> Status | None:
        """The run's status, or None when there is none or it is unreadable (being rewritten)."""
        from artifacts.errors import ArtifactError

        try:
            return Status.from_json(self.store.get_bytes(self.STATUS))
        except (ArtifactError, ValueError, TypeError):
            return None

    def write_status(self, status: Status) -> None:
        self.store.put_bytes(self.STATUS, status.to_json().encode())

    def stop_requested(self) -> bool:
        return self.store.exists(self.STOP)

    def __str__(self) -> str:
        return self.uri


def verdict_cli(argv: list[str]) -> int:
    """``python -m artifacts.run verdict RC RUN_URI``: print and exit with the verdict's code.

    The generated node script's exit code (through ``python -m artifacts.ending``, which first
    records a failed ending in the launcher's words) instead of restating the rule in bash. An
    unreadable status counts as none (the launcher's code decides).
    """
    if len(argv) != 3 or argv[0] != "verdict":
        print("usage: python -m artifacts.run verdict EXIT_CODE RUN_URI", file=sys.stderr)
        return ExitCode.USER
    try:
        rc = int(argv[1])
    except ValueError:
        print(f"error: exit code {argv[1]!r} is not an integer", file=sys.stderr)
        return ExitCode.USER
    status = None
    try:
        status = Run(argv[2]).read_status()
    except Exception as err:  # noqa: BLE001 - no status is a valid answer; say why
        print(
            f"warning: cannot read the run's status ({err}); judging by exit code", file=sys.stderr
        )
    code = verdict(rc, status)
    state = status.state if status else "unknown"
    why = f" ({describe_exit(rc)})" if exit_signal(rc) else ""
    print(
        f"twostage: launcher exited {rc}{why}, run state {state}: "
        f"verdict {code.name.lower()} ({int(code)})"
    )
    return int(code)


if __name__ == "__main__":
    sys.exit(verdict_cli(sys.argv[1:]))
