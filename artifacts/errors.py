"""The one user-facing exception family.

Every package raises a subclass of :class:`UserError` for failures a person can fix (bad URI,
missing key, corrupt download, invalid config). Entry points catch it once and turn it into a
one-line message and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; ``str(err)`` is the whole one-line message."""

    exit_code: int = 2


class ArtifactError(UserError):
    """Store, manifest, signature or verification failure."""


class VerificationError(ArtifactError):
    """An artifact does not match its manifest or signature (names the file and the reason)."""
