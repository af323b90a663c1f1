"""``STATUS.json``, a run's status document: one schema for everyone who reads or writes it.

Global rank 0 (or the launcher, or whoever sees a dead run's exit next) writes it; a person, the
launchers, the watcher and the controller read it. It lives apart from the run's layout
(:mod:`artifacts.run`) and from what an exit means (:mod:`artifacts.verdict`) because it is plain
data: a frozen :class:`Status` with a :class:`RunState`, no store, no paths. Unknown keys survive
a round trip, so a newer writer's fields outlive an older reader.

Pure and light: imports nothing of the project (the node script's ``verdict`` reads it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

#: ``Status.reason`` of an exit 75 after a spot notice / a stop request (SIGTERM without a notice):
#: the controller reads them (a notice: the node goes at its deadline; neither is a fault).
NOTICE_REASON = "spot interruption notice"
STOP_REASON = "stop requested"


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
