"""The control plane in the bucket: how the laptop, the controller and the nodes talk.

Three small JSON objects at the bucket root (``control/``, which nodes may read but never write):

- ``control/request.json`` — :class:`RunRequest`, written by ``invoke pretrain``: the run the
  controller should supervise, with its supervision policy (from the run's ``[run]`` section);
- ``control/heartbeat.json`` — written by the controller every poll; a node whose trainer has
  exited leaves its group when the heartbeat is older than its idle timeout;
- ``control/controller.json`` — :class:`ControllerState`: what the controller is doing (phase,
  attempt, nodes, the outcome when done), read by ``invoke status`` / ``invoke pretrain``.

Why the bucket and not SSM Run Command to the controller: submitting then needs only S3 writes to
``control/`` (no ``ssm:SendCommand``, which would be a remote shell on the controller for anyone
who may submit), the request is durable (a restarted or replaced controller picks it up), the
laptop never needs the controller's instance id, and the same TLS-only bucket carries everything.
The controller polls every 10 s (`WatchPolicy.poll_s`) anyway, so a request waits at most one poll.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from artifacts.node import CONTROLLER_STATE_KEY, HEARTBEAT_KEY, REQUEST_KEY
from trainer.launch import LaunchError

_ID = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
LAUNCHERS = ("deepspeed", "torchrun")


@dataclass(frozen=True)
class RunRequest:
    """A run for the controller to supervise (one at a time per cluster)."""

    request_id: str
    run_uri: str
    submitted_at: float
    node_count: int
    min_nodes: int | None = None
    launcher: str = "deepspeed"
    idle_timeout_s: float = 900.0
    stall_timeout_s: float = 3600.0
    max_hours: float | None = None
    max_dollars: float | None = None
    public_key: str | None = None

    def __post_init__(self) -> None:
        if not _ID.match(self.request_id):
            raise LaunchError(f"request id {self.request_id!r} is not a plain name")
        if not self.run_uri.startswith("s3://"):
            raise LaunchError(f"a cluster run lives in S3, got {self.run_uri!r}")
        if self.node_count < 1:
            raise LaunchError(f"node_count must be >= 1, got {self.node_count}")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.node_count:
            raise LaunchError(
                f"run.min_nodes must be between 1 and the cluster's {self.node_count} nodes, "
                f"got {self.min_nodes}"
            )
        if self.launcher not in LAUNCHERS:
            raise LaunchError(f"launcher must be one of {', '.join(LAUNCHERS)}")

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunRequest:
        doc = json.loads(data)
        known = {f.name for f in fields(cls)}
        if not isinstance(doc, dict) or set(doc) - known:
            raise ValueError(f"not a run request: unknown keys {sorted(set(doc) - known)}")
        return cls(**doc)


@dataclass
class ControllerState:
    """``control/controller.json``: the controller's view of the current (or last) request."""

    request_id: str = ""
    run_uri: str = ""
    phase: str = "idle"
    """idle | accepted | waiting-capacity | running | relaunching | scaling-to-zero | done."""
    updated_at: float = 0.0
    attempt: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] | None = None
    """:meth:`trainer.launch.policy.Outcome.to_dict` once ``phase`` is ``done``."""
    commands: dict[str, list[str]] = field(default_factory=dict)
    """rank → [command id, instance id] of the latest launch (``invoke logs`` reads them)."""

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ControllerState:
        doc = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


class ControlPlane:
    """Reads and writes the control objects through a store at the bucket root."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def _get(self, key: str) -> bytes | None:
        if not self.store.exists(key):
            return None
        return self.store.get_bytes(key)

    def request(self) -> RunRequest | None:
        data = self._get(REQUEST_KEY)
        if data is None:
            return None
        try:
            return RunRequest.from_json(data)
        except (ValueError, TypeError, LaunchError) as err:
            raise LaunchError(f"{REQUEST_KEY} is not a valid run request ({err})") from None

    def submit(self, request: RunRequest) -> None:
        self.store.put_bytes(REQUEST_KEY, request.to_json())

    def beat(self, now: float, *, request_id: str = "", phase: str = "idle") -> None:
        doc = {"at": now, "request_id": request_id, "phase": phase}
        self.store.put_bytes(HEARTBEAT_KEY, json.dumps(doc).encode())

    def heartbeat_at(self) -> float | None:
        data = self._get(HEARTBEAT_KEY)
        if data is None:
            return None
        try:
            return float(json.loads(data)["at"])
        except (ValueError, KeyError, TypeError):
            return None

    def state(self) -> ControllerState:
        data = self._get(CONTROLLER_STATE_KEY)
        if data is None:
            return ControllerState()
        try:
            return ControllerState.from_json(data)
        except (ValueError, TypeError):
            return ControllerState()

    def write_state(self, state: ControllerState) -> None:
        self.store.put_bytes(CONTROLLER_STATE_KEY, state.to_json())
