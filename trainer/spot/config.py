"""``[spot]`` of the recipe: where and how often to look for the interruption notice."""

from __future__ import annotations

from dataclasses import dataclass

from artifacts.config import check as _check


@dataclass(frozen=True)
class SpotConfig:
    """``[spot]``: watching for the two-minute spot interruption notice."""

    enabled: bool = True
    """Poll the instance metadata service (and treat SIGTERM) as an interruption notice."""
    endpoint: str | None = None
    """Metadata service base URL; None: the watcher's default (its env override, else EC2's)."""
    poll_interval: float = 5.0
    """Seconds between polls."""

    def __post_init__(self) -> None:
        _check(
            self.poll_interval > 0, "spot.poll_interval", f"must be > 0, got {self.poll_interval}"
        )
