"""Can the interruption checkpoint be committed before the instance goes? (pure decisions)

A spot notice says when the instance will be reclaimed (``{"action": "terminate", "time":
"2026-12-01T23:30:00Z"}``, about 120 s ahead). Saving and uploading a checkpoint that cannot
finish in time is harmless (no manifest, ignored at resume, cleaned up) but it is wasted
bandwidth and keeps the node busy for nothing; worse, a half-upload can never replace the last
committed checkpoint. So the trainer asks :func:`decide_upload` with what it measured on the
previous saves (bytes, save seconds, upload throughput) and skips the save when it cannot fit,
relying on the last committed checkpoint; the decision and its numbers are logged and land in
``STATUS.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Seconds kept back from the deadline: the commit's own requests, clock skew, the barrier.
DEFAULT_MARGIN_S = 10.0


def parse_notice_time(body: bytes | str | dict[str, Any] | None) -> float | None:
    """The Unix time in a ``spot/instance-action`` document, or None when it carries none.

    Accepts the raw body or the parsed JSON. ``time`` is ISO 8601 UTC (``2026-12-01T23:30:00Z``);
    anything unreadable gives None (the caller then tries to save: the notice is still real).
    """
    if body is None:
        return None
    doc: Any = body
    if isinstance(body, bytes | str):
        try:
            doc = json.loads(body)
        except ValueError:
            return None
    if not isinstance(doc, dict) or not isinstance(doc.get("time"), str):
        return None
    try:
        when = datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


#: The notice actions, best first: each commits the newest step it can before the deadline.
#: ``save``: nothing in flight, save + upload the last completed step;
#: ``finish-and-save``: let the periodic upload in flight finish, then save + upload the newest;
#: ``abandon-and-save``: stop the in-flight upload (its bandwidth goes to the newest step);
#: ``finish-only``: no notice save, the in-flight periodic checkpoint is what commits;
#: ``skip``: nothing can commit in time, the run relies on the last committed checkpoint.
ACTIONS = ("save", "finish-and-save", "abandon-and-save", "finish-only", "skip")
#: The actions nodes agree on (``save`` is ``finish-and-save`` on a node with nothing in flight).
AGREED_ACTIONS = ("finish-and-save", "abandon-and-save", "finish-only")


@dataclass(frozen=True)
class UploadDecision:
    """Whether to save + upload on a notice, and the numbers the decision was made from."""

    upload: bool
    reason: str
    available_s: float | None
    needed_s: float | None
    bytes: int | None
    throughput_bps: float | None
    save_s: float | None
    action: str = "save"
    """One of :data:`ACTIONS`."""
    inflight_bytes: int = 0
    """Bytes of a periodic checkpoint still uploading when the notice came."""
    options: dict[str, float] = field(default_factory=dict)
    """Seconds each feasible-in-principle action needs (what the choice was made from)."""

    @property
    def abandon(self) -> bool:
        """Whether the in-flight upload is to be stopped."""
        return self.action == "abandon-and-save"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_upload(
    *,
    now: float,
    deadline: float | None,
    checkpoint_bytes: int | None = None,
    throughput_bps: float | None = None,
    save_s: float | None = None,
    fixed_s: float = 1.0,
    margin_s: float = DEFAULT_MARGIN_S,
    inflight_bytes: int = 0,
    can_abandon: bool = True,
    allowed: tuple[str, ...] = ACTIONS,
) -> UploadDecision:
    """The action that commits the newest step before ``deadline``, from measured numbers.

    ``checkpoint_bytes``: this node's bytes of the previous checkpoint (the next one is the same
    size); ``throughput_bps``: bytes per second this node's uploads reached; ``save_s``: seconds
    the previous local save took; ``fixed_s``: per-checkpoint overhead (commit requests);
    ``inflight_bytes``: bytes of a periodic checkpoint still to upload (they share the node's
    bandwidth with the notice save: counting them is the difference between "fits" and a save
    that cannot finish); ``can_abandon``: whether the in-flight upload can be stopped;
    ``allowed``: the actions every node can still take (a multi-node run agrees on one).
    Unknown deadline or no measurement yet: save (trying is harmless; skipping needs evidence).
    """
    numbers: dict[str, Any] = {
        "bytes": checkpoint_bytes,
        "throughput_bps": throughput_bps,
        "save_s": save_s,
        "inflight_bytes": int(inflight_bytes or 0),
    }
    first = "finish-and-save" if inflight_bytes else "save"
    if deadline is None:
        return UploadDecision(True, "the notice gives no deadline", None, None, action=first,
                              **numbers)  # fmt: skip
    available = deadline - now - margin_s
    if not checkpoint_bytes or not throughput_bps or throughput_bps <= 0:
        return UploadDecision(
            True, "no upload measured yet: trying", round(available, 1), None, action=first,
            **numbers,
        )  # fmt: skip
    new = (save_s or 0.0) + checkpoint_bytes / throughput_bps + fixed_s
    options: dict[str, float] = {}
    if inflight_bytes:
        old = inflight_bytes / throughput_bps + fixed_s
        options["finish-and-save"] = old + new
        if can_abandon:
            options["abandon-and-save"] = new
        options["finish-only"] = old
    else:
        options["save"] = new
        if {"finish-and-save", "abandon-and-save"} & set(allowed):
            allowed = (*allowed, "save")
        elif "finish-only" in allowed:  # another node's in-flight checkpoint is what commits
            return UploadDecision(
                False, "finish-only: the checkpoint in flight commits, no notice save",
                round(available, 1), 0.0, action="finish-only", **numbers,
            )  # fmt: skip
    options = {k: round(v, 1) for k, v in options.items() if k in allowed}
    numbers["options"] = options
    for action in ACTIONS:
        needed = options.get(action)
        if needed is not None and needed <= available:
            reason = (
                f"{'fits' if action == 'save' else action}: {needed:.1f}s needed, "
                f"{available:.1f}s left before the deadline"
                + (f" ({inflight_bytes / 1e9:.2f} GB still uploading)" if inflight_bytes else "")
            )
            return UploadDecision(action in ACTIONS[:3], reason, round(available, 1), needed,
                                  action=action, **numbers)  # fmt: skip
    reason = (
        f"cannot finish: {new:.1f}s needed ({checkpoint_bytes / 1e9:.2f} GB at "
        f"{throughput_bps / 1e9:.2f} GB/s + {save_s or 0.0:.1f}s save"
        + (f", {inflight_bytes / 1e9:.2f} GB of an earlier upload in flight" if inflight_bytes else "")
        + f") but {available:.1f}s left before the deadline; relying on the last committed checkpoint"
    )
    return UploadDecision(False, reason, round(available, 1), round(new, 1), action="skip",
                          **numbers)  # fmt: skip
