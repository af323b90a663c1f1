"""Spot interruptions: watch for the two-minute notice, stop at a step boundary, exit 75.

Two sources raise the same notice:

* the EC2 instance metadata service (IMDSv2): ``PUT /latest/api/token`` for a session token, then
  ``GET /latest/meta-data/spot/instance-action`` with it; 404 means "no notice", a JSON body
  ``{"action": "terminate", "time": "..."}`` is the notice (about 120 s before the instance goes);
* ``SIGTERM`` (what systemd and the DeepSpeed launcher send before stopping a process).

Where polling happens (decision, see docs/checkpoints-and-spot.md): an endpoint passed in, or set
in ``TWOSTAGE_IMDS_ENDPOINT``, is always polled (tests serve a fake on 127.0.0.1); otherwise the
real ``169.254.169.254`` is polled only when this machine says it is an EC2 instance (DMI vendor
or hypervisor UUID). ``TWOSTAGE_IMDS_ENDPOINT=off`` turns polling off. SIGTERM is always watched.

The HF glue is :class:`trainer.spot.callback.InterruptionCallback`; the entry point then exits with
:attr:`artifacts.run.ExitCode.INTERRUPTED` ("interrupted, resume me").
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

"""Exit status meaning "interrupted, a committed checkpoint exists (or none yet): resume me"."""

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
ENDPOINT_ENV = "TWOSTAGE_IMDS_ENDPOINT"
POLL_ENV = "TWOSTAGE_IMDS_POLL_SECONDS"
TOKEN_TTL_SECONDS = 21600
HTTP_TIMEOUT_SECONDS = 1.0
#: Consecutive failures before an endpoint that never answered is taken for "no IMDS here".
GIVE_UP_AFTER = 3
_DMI_FILES = ("/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/board_vendor")


def on_ec2() -> bool:
    """Whether this machine identifies itself as an EC2 instance (no network involved)."""
    for name in _DMI_FILES:
        try:
            if "amazon" in Path(name).read_text().strip().lower():
                return True
        except OSError:
            continue
    try:
        return Path("/sys/hypervisor/uuid").read_text().strip().lower().startswith("ec2")
    except OSError:
        return False


def resolve_endpoint(endpoint: str | None) -> str | None:
    """The IMDS base URL to poll, or None when polling is off (see the module docstring)."""
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV) or None
    if endpoint is not None:
        return None if endpoint.strip().lower() in ("off", "none", "0") else endpoint.rstrip("/")
    return DEFAULT_IMDS_ENDPOINT if on_ec2() else None


class InterruptionWatcher:
    """Polls IMDSv2 for a spot notice in a daemon thread and turns SIGTERM into the same notice.

    Why a thread: the training loop only reads :attr:`notice` at step boundaries, it never waits
    on the network. Timeouts are short and there are no retries beyond the next poll.
    """

    def __init__(self, endpoint: str | None = None, poll_interval: float | None = None) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        if poll_interval is None:
            poll_interval = float(os.environ.get(POLL_ENV, "5.0"))
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.poll_interval = poll_interval
        self._notice: str | None = None
        self._noticed_at: float | None = None
        #: Unix time the instance goes, from the notice's ``time`` (None: unknown, e.g. SIGTERM).
        self.deadline: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._previous_handler: Any = None
        self._installed = False
        self.polls = 0

    # -- public state ------------------------------------------------------------------------
    @property
    def notice(self) -> str | None:
        """A one-line description of the interruption, or None while there is none."""
        return self._notice

    @property
    def noticed_at(self) -> float | None:
        """``time.time()`` when the notice was first seen, or None."""
        return self._noticed_at

    def set_notice(self, reason: str) -> None:
        """Record a notice (first one wins; later ones are only logged)."""
        with self._lock:
            if self._notice is not None:
                return
            self._notice = reason
            self._noticed_at = time.time()
        log.warning("interruption notice: %s; saving at the next step boundary", reason)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> InterruptionWatcher:
        """Install the SIGTERM handler (main thread only) and start polling when enabled."""
        self._install_sigterm()
        if self.endpoint is None:
            log.info("spot watcher: not polling instance metadata (not EC2); watching SIGTERM only")
        elif self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)
            self._thread.start()
            log.info("spot watcher: polling %s every %.1fs", self.endpoint, self.poll_interval)
        return self

    def stop(self) -> None:
        """Stop polling and give SIGTERM back to the handler that was there before."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HTTP_TIMEOUT_SECONDS * 2 + 1)
            self._thread = None
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._installed = False

    def __enter__(self) -> InterruptionWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SIGTERM -----------------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        if self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("spot watcher: not in the main thread, SIGTERM is not watched")
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._notice is not None and self._notice.startswith("SIGTERM"):
            # A second SIGTERM means "really stop now": behave as if we were never installed.
            log.warning("second SIGTERM: stopping without waiting for the checkpoint")
            prev = self._previous_handler
            if callable(prev):
                prev(signum, frame)
            elif prev != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        self.set_notice("SIGTERM received")
        # A Python handler that was there before (e.g. a library's cleanup) still runs; the
        # default action (terminate now) is exactly what we replace, so it is not chained.
        if callable(self._previous_handler):
            self._previous_handler(signum, frame)

    # -- IMDSv2 ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECONDS) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            status, body = self._request(
                "PUT",
                "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
            )
            if status != 200:
                raise OSError(f"IMDSv2 token request answered HTTP {status}")
            self._token = body.decode().strip()
            self._token_expires = time.monotonic() + TOKEN_TTL_SECONDS - 60
        return self._token

    def poll_once(self) -> str | None:
        """One IMDSv2 round trip; returns the notice text or None (raises OSError if unreachable)."""
        self.polls += 1
        token = self._get_token()
        status, body = self._request(
            "GET", "/latest/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token}
        )
        if status == 401:  # token expired or revoked: fetch a new one on the next poll
            self._token = None
            return None
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"spot/instance-action answered HTTP {status}")
        from trainer.spot.deadline import parse_notice_time

        self.deadline = parse_notice_time(body)
        try:
            action = json.loads(body)
            return f"spot {action.get('action', '?')} at {action.get('time', '?')}"
        except (ValueError, AttributeError):
            return f"spot instance-action: {body.decode(errors='replace')[:200]}"

    def _run(self) -> None:
        reached = False
        failures = 0
        while not self._stop.is_set():
            try:
                notice = self.poll_once()
                reached, failures = True, 0
            except OSError as err:  # URLError and timeouts are OSErrors
                failures += 1
                if not reached and failures >= GIVE_UP_AFTER:
                    log.info("spot watcher: %s unreachable (%s); not polling", self.endpoint, err)
                    return
                # A blip (a busy host can miss a 1 s timeout): keep polling, say it once.
                if failures == 1 and reached:
                    log.warning("spot watcher: poll failed (%s); will keep trying", err)
                notice = None
            if notice is not None:
                self.set_notice(notice)
                return
            self._stop.wait(self.poll_interval)
