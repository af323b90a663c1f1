"""Store outages are weather: retry through them for a bounded window, then stop cleanly.

S3 (or any store) can be unreachable for a minute or more; boto3's own retries give up after
about 13 s (10 attempts). Work that needs the store but not the training loop — checkpoint
uploads, the status file, the final publish — goes through :func:`retry_through_outage`, which
keeps retrying with capped exponential backoff until ``window`` seconds have passed since the
first failure (``run.store_outage_minutes``, default 15). Only then does it raise
:class:`StoreOutageError`, which the trainer turns into exit 75 (interrupted: relaunch the same
run, it resumes from the last committed checkpoint) with the reason in ``STATUS.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from artifacts.errors import ArtifactError, VerificationError
from artifacts.publish import MissingPartsError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest pause between two attempts (seconds).
MAX_BACKOFF = 30.0


class StoreOutageError(RuntimeError):
    """The store stayed unreachable for the whole outage window (not a user error: exit 75)."""


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` can be a store outage (network, 5xx, timeouts) rather than a bug.

    Store errors arrive as :class:`ArtifactError` (translated botocore errors), raw botocore /
    urllib3 errors (connection closed, read timeouts) or ``OSError``; a failed verification or
    another node's missing part (bounded by the commit's own part time-out) is not weather.
    """
    if isinstance(err, VerificationError | MissingPartsError):
        return False  # a node that never uploaded has its own retry; the head's bound is part_timeout
    if isinstance(err, ArtifactError | OSError | TimeoutError):
        return True
    module = type(err).__module__.split(".", 1)[0]
    return module in ("botocore", "s3transfer", "urllib3", "concurrent")


def retry_through_outage(
    fn: Callable[[], T],
    *,
    what: str,
    window: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    first_backoff: float = 1.0,
) -> T:
    """``fn()``, retried while it fails with a transient error, for up to ``window`` seconds.

    The window starts at the first failure. A non-transient error propagates at once. Past the
    window, :class:`StoreOutageError` names what failed and for how long.
    """
    started: float | None = None
    delay = first_backoff
    attempts = 0
    while True:
        try:
            result = fn()
        except BaseException as err:
            if not is_transient(err):
                raise
            now = clock()
            attempts += 1
            if started is None:
                started = now
                log.warning(
                    "%s: the store is failing (%s); retrying for up to %.0f s",
                    what,
                    str(err).splitlines()[0][:200] if str(err) else type(err).__name__,
                    window,
                )
            if now - started >= window:
                raise StoreOutageError(
                    f"{what}: the store was unreachable for {now - started:.0f} s "
                    f"(run.store_outage_minutes = {window / 60:g}): {err}"
                ) from err
            sleep(min(delay, max(0.0, window - (now - started))))
            delay = min(delay * 2, MAX_BACKOFF)
            continue
        if started is not None:
            log.warning(
                "%s: the store is back after %.1f s (%d failed attempts)",
                what,
                clock() - started,
                attempts,
            )
        return result
