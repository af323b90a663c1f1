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
from dataclasses import asdict, dataclass
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
) -> UploadDecision:
    """Save and upload unless the measured numbers say it cannot finish before ``deadline``.

    ``checkpoint_bytes``: this node's bytes of the previous checkpoint (the next one is the same
    size); ``throughput_bps``: bytes per second this node's uploads reached; ``save_s``: seconds
    the previous local save took; ``fixed_s``: per-checkpoint overhead (commit requests). Unknown
    deadline or no measurement yet: upload (trying is harmless; skipping needs evidence).
    """
    numbers = {
        "bytes": checkpoint_bytes,
        "throughput_bps": throughput_bps,
        "save_s": save_s,
    }
    if deadline is None:
        return UploadDecision(True, "the notice gives no deadline", None, None, **numbers)
    available = deadline - now - margin_s
    if not checkpoint_bytes or not throughput_bps or throughput_bps <= 0:
        return UploadDecision(
            True, "no upload measured yet: trying", round(available, 1), None, **numbers
        )
    needed = (save_s or 0.0) + checkpoint_bytes / throughput_bps + fixed_s
    if needed <= available:
        reason = f"fits: {needed:.1f}s needed, {available:.1f}s left before the deadline"
        return UploadDecision(True, reason, round(available, 1), round(needed, 1), **numbers)
    reason = (
        f"cannot finish: {needed:.1f}s needed ({checkpoint_bytes / 1e9:.2f} GB at "
        f"{throughput_bps / 1e9:.2f} GB/s + {save_s or 0.0:.1f}s save) but {available:.1f}s left "
        "before the deadline; relying on the last committed checkpoint"
    )
    return UploadDecision(False, reason, round(available, 1), round(needed, 1), **numbers)
