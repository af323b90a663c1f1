"""The trainer's user-facing error type (caught once at the entry point, exit 2)."""

from __future__ import annotations

from artifacts.errors import UserError


class TrainerError(UserError):
    """A trainer failure the user can fix: bad config, missing data, unusable checkpoint."""
