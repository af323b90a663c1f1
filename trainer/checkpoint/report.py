"""What ``STATUS.json`` and ``training_summary.json`` say about checkpoints and interruptions.

For each committed checkpoint: bytes per rank (from the manifest's file names), the local save
time, the upload time and submit → commit; the last commit and how much training a preemption
right now would cost; and every interruption of the run so far (carried over from the previous
launch's status): when, at which step, whether between micro-batches, the deadline decision with
its numbers and the measured notice → commit time. Global rank 0 (the head's local rank 0)
holds it; its committer records the commits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from trainer.checkpoint.schedule import at_risk_line

#: Checkpoints listed in the status (the newest ones; the summary lists all).
RECENT = 5


class CheckpointReport:
    """Collects save times (every rank's hook), commits (the committer) and interruptions."""

    def __init__(self, committer: Any, *, previous: Mapping[str, Any] | None = None) -> None:
        self.committer = committer
        self.save_s: dict[int, float] = {}
        prev = dict(previous or {})
        self.interruptions: list[dict[str, Any]] = list(prev.get("interruptions") or [])
        self.started = time.time()

    def record_save(self, step: int, seconds: float) -> None:
        self.save_s[int(step)] = round(float(seconds), 3)

    def checkpoints(self) -> list[dict[str, Any]]:
        """One entry per checkpoint this launch committed (head) or uploaded (other nodes)."""
        out = []
        commits = getattr(self.committer, "commits", {}) or {}
        uploads = getattr(self.committer, "uploads", {}) or {}
        for step in sorted(set(commits) | set(uploads)):
            up = uploads.get(step, {})
            entry = {"step": step, "save_s": self.save_s.get(step), **up, **commits.get(step, {})}
            if up.get("bytes") and up.get("upload_s"):
                entry["upload_gbps"] = round(up["bytes"] / up["upload_s"] / 1e9, 3)
            out.append(entry)
        return out

    def add_interruption(self, record: Mapping[str, Any]) -> None:
        self.interruptions.append(dict(record))

    def status_fields(self) -> dict[str, Any]:
        """The fields merged into every status write."""
        entries = self.checkpoints()
        committed = [e for e in entries if e.get("committed_at") is not None]
        last = committed[-1] if committed else None
        last_at = last["committed_at"] if last else None
        return {
            "checkpoints": {
                "last_commit": None
                if last is None
                else {"step": last["step"], "at": last["committed_at_iso"]},
                "at_risk": at_risk_line(time.time(), last_at, self.started),
                "recent": entries[-RECENT:],
            },
            "interruptions": self.interruptions,
        }

    def summary(self) -> dict[str, Any]:
        """For ``training_summary.json``: every checkpoint of this launch and every interruption."""
        return {"checkpoints": self.checkpoints(), "interruptions": self.interruptions}
