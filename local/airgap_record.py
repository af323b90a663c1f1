"""A blocked attempt: the error, the code that made it, and the record that outlives a catch.

Kept below both :mod:`local.airgap_socket` (which refuses the attempts) and :mod:`local.airgap`
(which puts the guard up and takes it down) because both need it: the socket replacements
record what they refused, and leaving :func:`local.airgap.airgapped` re-raises what a block
swallowed. The guard's shared state lives here for the same reason.

:class:`AirgapViolation` is deliberately *not* an ``OSError``: ``except OSError`` /
``except socket.error`` / requests' ``ConnectionError`` handling does not catch it. Code that
catches *every* ``Exception`` still could, so :func:`record` also keeps and logs each attempt.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

# Named after the public module, as before the split: a logging setup for ``local.airgap``
# still sees every blocked attempt.
logger = logging.getLogger("local.airgap")

#: The guard's own modules: their frames are never the code that tried.
GUARD_MODULES = ("local.airgap", "local.airgap_record", "local.airgap_socket")
# Frames in these files are the plumbing of a connection, not the code that asked for it.
_PLUMBING_PREFIXES = (
    *"socket ssl selectors asyncio concurrent threading http.client urllib urllib3 requests httpx "
    "httpx2 httpcore httpcore2 h11 h2 anyio aiohttp botocore boto3 s3transfer dns".split(),
    *GUARD_MODULES,
)


class AirgapViolation(Exception):  # noqa: N818 - the name is the public contract
    """A network attempt inside :func:`local.airgap.airgapped`; deliberately not an ``OSError``."""

    def __init__(self, message: str, *, destination: str = "", caller: str = "") -> None:
        super().__init__(message)
        self.destination = destination
        self.caller = caller


class GuardState:
    """One per process: the socket patches cover every thread, so their bookkeeping does too."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.guards: list[bool] = []  # allow_loopback of each active airgapped() block
        self.originals: dict[tuple[Any, str], Any] = {}
        self.violations: list[AirgapViolation] = []


state = GuardState()


# ---------------------------------------------------------------------------------------------
# Naming the caller and recording the attempt


def _frame_label(frame: Any) -> str:
    module = frame.f_globals.get("__name__", "?")
    func = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    return f"{module}.{func} ({frame.f_code.co_filename}:{frame.f_lineno})"


def _is_plumbing(frame: Any) -> bool:
    module = frame.f_globals.get("__name__", "")
    return any(module == p or module.startswith(p + ".") for p in _PLUMBING_PREFIXES)


def _caller() -> str:
    """The first frame outside socket/ssl/the guard, and the first outside network libraries."""
    frame = sys._getframe(2)
    first = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if first is None and module not in ("socket", "ssl", *GUARD_MODULES):
            first = frame
        if first is not None and not _is_plumbing(frame):
            label = _frame_label(frame)
            return label if frame is first else f"{_frame_label(first)}, called from {label}"
        frame = frame.f_back
    return _frame_label(first) if first is not None else "?"


def record(what: str, destination: str, note: str = "") -> AirgapViolation:
    """The violation for a blocked attempt, named, kept and logged; the caller raises it."""
    caller = _caller()
    err = AirgapViolation(
        f"air gap: blocked {what} {destination}{note} by {caller}; the network is off for this run "
        "(do anything that needs it before the air gap goes up)",
        destination=destination,
        caller=caller,
    )
    with state.lock:
        state.violations.append(err)
    logger.error("%s", err)
    return err
