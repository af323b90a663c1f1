"""The one user-facing exception type of the infra package."""

from __future__ import annotations

from artifacts.errors import UserError


class InfraError(UserError):
    """Invalid stack config or an impossible infrastructure request; names the key to fix."""
