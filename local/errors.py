"""User-facing errors of the local (stage 2) package.

Every failure a person can fix — a missing key file, a tampered dataset, a bad record — is a
:class:`LocalError`; the invoke wrapper turns it into one line and exit code 2. Messages never
quote dataset contents: they name the file, the chunk index or the line number instead.
"""

from __future__ import annotations

from artifacts.errors import UserError


class LocalError(UserError):
    """A stage-2 failure the user can fix; ``str(err)`` is the whole one-line message."""


class DecryptionError(LocalError):
    """An encrypted file failed authentication: wrong key, tampering, truncation or bad format."""
