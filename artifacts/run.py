"""The run protocol: one definition of a run's layout, its status, its exit codes and its verdict.

A *run* is a prefix in a store (``s3://bucket/runs/<name>`` or a local folder). Everything that
reads or writes a run — the trainer on every rank, the per-node script, the launcher on the laptop,
the watcher, the demo, the benchmarks — builds a :class:`Run` once and asks it for paths, reads
``STATUS.json`` as a :class:`Status`, and decides what a rank's exit means with :func:`verdict`.
Nothing else spells out ``"STATUS.json"``, ``"checkpoints"`` or the number 75 (a test checks it).

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

import json
import math
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from artifacts.exits import describe_exit, exit_signal

if TYPE_CHECKING:  # pragma: no cover - typing only
    from artifacts.store_api import Store


#: ``Status.reason`` of an exit 75 after a spot notice / a stop request (SIGTERM without a notice):
#: the controller reads them (a notice: the node goes at its deadline; neither is a fault).
NOTICE_REASON = "spot interruption notice"
STOP_REASON = "stop requested"


class ExitCode(IntEnum):
    """Exit codes of the trainer, the per-node script and ``invoke pretrain`` (documented contract)."""

    OK = 0
    """Finished: converged, or reached the epoch/step limit; ``final/`` is published."""
    FAILED = 1
    """A failure that is not the user's: look at the log."""
    USER = 2
    """A user error (config, URI, flag, file): one line says what to fix; nothing was lost."""
    BOOT = 3
    """The node could not start the trainer (bootstrap unfinished, wrong node, no config)."""
    INTERRUPTED = 75
    """Interrupted (spot notice, stop, store outage) after committing: relaunch the same run (EX_TEMPFAIL)."""


class RunState(StrEnum):
    """The ``state`` field of ``STATUS.json``."""

    PREPARING = "preparing"
    PREPARED = "prepared"
    """``prepare-data`` committed the data cache; no rank has recorded a start since."""
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    CONVERGED = "converged"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        """The run ended well: ``final/`` is published and nothing needs relaunching."""
        return self in (RunState.CONVERGED, RunState.FINISHED)

    @property
    def live(self) -> bool:
        """No launch's ending is recorded (preparing, prepared, running): when the ranks exit
        without writing one, whoever sees the exit next records
        it (:func:`artifacts.ending.settle`)."""
        return self in (RunState.PREPARING, RunState.PREPARED, RunState.RUNNING)


def now_iso() -> str:
    """UTC wall time in the one format STATUS.json uses."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Status:
    """``STATUS.json``: what a person or a launcher needs to know about a run, in one schema.

    Unknown keys read from a file are kept in ``extra`` (and written back), so a newer writer's
    fields survive an older reader.
    """

    state: RunState
    global_step: int = 0
    epoch: float | None = None
    best_val_loss: float | None = None
    converged: bool = False
    converged_at_step: int | None = None
    """The step whose evaluation made the criterion declare convergence (None until then)."""
    val_loss_history: tuple[Mapping[str, Any], ...] = ()
    """One entry per evaluation: ``{"step", "epoch", "val_loss"}``."""
    started_at: str | None = None
    updated_at: str | None = None
    node_count: int = 1
    world_size: int | None = None
    final: str | None = None
    """URI of the published model once the run is done."""
    reason: str | None = None
    """Why the run is interrupted or failed, in words."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", RunState(self.state))
        object.__setattr__(self, "best_val_loss", _finite(self.best_val_loss))
        object.__setattr__(self, "val_loss_history", tuple(self.val_loss_history))

    @property
    def done(self) -> bool:
        return self.state.done

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "state":
                value = str(value)
            elif f.name == "val_loss_history":
                value = [dict(e) for e in value]
            doc[f.name] = value
        return {**dict(self.extra), **doc}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Status:
        if not isinstance(doc, Mapping) or "state" not in doc:
            raise ValueError("not a run status (no 'state')")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in doc.items() if k in known}
        try:
            kwargs["state"] = RunState(doc["state"])
        except ValueError:
            raise ValueError(f"unknown run state {doc['state']!r}") from None
        extra = {k: v for k, v in doc.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, text: str | bytes) -> Status:
        return cls.from_dict(json.loads(text))

    def evolve(self, **changes: Any) -> Status:
        """A copy with ``changes`` and a fresh ``updated_at``."""
        return replace(self, **changes, updated_at=now_iso())


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


def verdict(exit_code: int | None, status: Status | None) -> ExitCode:
    """What a rank's (or launcher's) exit means, given the run's status: the one rule everyone uses.

    - The status says done (converged/finished) → OK, whatever the code: a rank can abort at
      interpreter shutdown after everything was committed.
    - The status says interrupted, or the code is 75 → INTERRUPTED (relaunch, it resumes).
    - Code 2 → USER; code 3 → BOOT.
    - Code 0 without a done status → FAILED: the trainer exits 0 only after publishing and
      writing the status, so a missing or unfinished status means something went wrong.
    - Anything else → FAILED.
    """
    state = status.state if status is not None else None
    if state is not None and state.done:
        return ExitCode.OK
    if state is RunState.INTERRUPTED or exit_code == ExitCode.INTERRUPTED:
        return ExitCode.INTERRUPTED
    if exit_code == ExitCode.USER:
        return ExitCode.USER
    if exit_code == ExitCode.BOOT:
        return ExitCode.BOOT
    return ExitCode.FAILED


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
