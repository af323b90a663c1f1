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

The HF glue is :class:`InterruptionCallback`; the entry point then exits with
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

from artifacts.run import ExitCode

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
        from trainer.deadline import parse_notice_time

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


def _any_rank_true(flag: bool) -> bool:
    """All-reduce MAX of a flag so every rank takes the same decision at the same step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _earliest_across_ranks(value: float | None) -> float | None:
    """All-reduce MIN of a Unix time (None = unknown on this rank); None if no rank knows one."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor([float("inf") if value is None else value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    out = float(t.item())
    return None if out == float("inf") else out


def _build_interruption_callback() -> type:
    from transformers import TrainerCallback

    class InterruptionCallback(TrainerCallback):
        """HF callback: once any rank has a notice, save the last completed step and stop.

        Checked at every micro-batch boundary (``on_substep_end``) as well as at every optimizer
        step (``on_step_end``): on a notice mid-accumulation the partial gradients are dropped and
        the checkpoint is the state of the last completed optimizer step (weights, optimizer,
        scheduler and data position have not moved since; a resume replays that step's
        micro-batches), so the notice waits at most one micro-batch instead of a whole step.

        Before asking for the save it reads the notice's deadline and asks
        :func:`trainer.deadline.decide_upload` with ``estimate()`` (this node's measured bytes,
        upload throughput and save time); when the upload cannot finish in time on some node, no
        rank saves and the run relies on the last committed checkpoint (:attr:`decision`).

        After ``Trainer.train()`` returns, :attr:`interrupted` tells the entry point to exit 75;
        ``on_train_end`` has waited for the commit when a committer is given (and
        ``CommitCallback.on_train_end`` waits too). ``check_every`` > 1 trades reaction time for
        fewer all-reduces on very fast steps.
        """

        def __init__(
            self,
            watcher: InterruptionWatcher,
            *,
            committer: Any = None,
            check_every: int = 1,
            estimate: Any = None,
            clock: Any = time.time,
        ) -> None:
            self.watcher = watcher
            self.committer = committer
            self.check_every = max(1, int(check_every))
            self.estimate = estimate
            self.clock = clock
            self.interrupted = False
            self.interrupted_at_step: int | None = None
            #: True when the notice was acted on between two micro-batches of one step.
            self.mid_step = False
            self.decision: Any = None
            self.deadline: float | None = None
            #: Whether this callback asked for the interruption checkpoint to be saved.
            self.save = False
            self.notice_to_commit_s: float | None = None

        def _interrupt(self, state: Any, control: Any, *, mid_step: bool) -> Any:
            from trainer.deadline import decide_upload

            if self.watcher.notice is None:
                self.watcher.set_notice("another rank was notified")
            self.interrupted = True
            self.mid_step = mid_step
            self.interrupted_at_step = state.global_step
            numbers = dict(self.estimate()) if self.estimate is not None else {}
            # The rank that read the notice knows the deadline; the node's local rank 0 knows
            # the upload numbers: every rank decides with the earliest deadline any rank saw.
            self.deadline = _earliest_across_ranks(self.watcher.deadline)
            decision = decide_upload(now=self.clock(), deadline=self.deadline, **numbers)
            upload = not _any_rank_true(not decision.upload)  # every node must be able to finish
            if decision.upload and not upload:
                from dataclasses import replace

                decision = replace(
                    decision,
                    upload=False,
                    reason="another node cannot finish its upload before the deadline; "
                    "relying on the last committed checkpoint",
                )
            saved = self.committer is not None and getattr(
                self.committer, "has_submitted", lambda step: False
            )(state.global_step)
            save = upload
            if upload and mid_step and (saved or state.global_step == 0):
                # The last completed step is already saved (its upload may be reading those very
                # files through hard links: rewriting them would corrupt it), or nothing is done
                # yet: waiting for that commit is the whole job.
                save = False
            self.decision = decision
            self.save = save
            control.should_save = save
            control.should_training_stop = True
            if self.committer is not None and hasattr(self.committer, "expedite"):
                self.committer.expedite()  # uploads are now the critical path
            where = "between two micro-batches of step" if mid_step else "at the end of step"
            if upload:
                log.warning(
                    "interrupted %s %d: saving the last completed step (%d), then stopping (%s)",
                    where,
                    state.global_step + (1 if mid_step else 0),
                    state.global_step,
                    decision.reason,
                )
            else:
                log.warning(
                    "interrupted %s %d: not saving: %s",
                    where,
                    state.global_step + (1 if mid_step else 0),
                    decision.reason,
                )
            return control

        def record(self, **extra: Any) -> dict[str, Any]:
            """This interruption for ``STATUS.json``: what, when, where, the decision, the time."""
            from datetime import UTC, datetime

            def iso(t: float | None) -> str | None:
                if t is None:
                    return None
                return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

            return {
                "notice": self.watcher.notice,
                "noticed_at": iso(self.watcher.noticed_at),
                "deadline": iso(self.deadline),
                "step": self.interrupted_at_step,
                "between_micro_batches": self.mid_step,
                "saved": self.save,
                "decision": None if self.decision is None else self.decision.to_dict(),
                "notice_to_commit_s": self.notice_to_commit_s,
                **extra,
            }

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.interrupted or state.global_step % self.check_every:
                return control
            if _any_rank_true(self.watcher.notice is not None):
                return self._interrupt(state, control, mid_step=False)
            return control

        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            # Every rank is at the same micro-batch (ZeRO-3 forwards are collective), so an
            # all-reduce here is as safe as at the step end; it costs one per micro-batch.
            if self.interrupted:
                return control
            if _any_rank_true(self.watcher.notice is not None):
                return self._interrupt(state, control, mid_step=True)
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            # Breaking out of the loop still runs the epoch-end hooks: no evaluation of a partial
            # epoch inside the notice window (it would also feed the convergence criterion an
            # evaluation an uninterrupted run never makes).
            if self.interrupted:
                control.should_evaluate = False
                if not self.save:
                    control.should_save = False  # cannot finish in time, or already saved
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if not self.interrupted:
                return control
            if self.committer is not None:
                self.committer.wait()
            if self.watcher.noticed_at is None:
                return control
            elapsed = round(time.time() - self.watcher.noticed_at, 2)
            if self.decision is not None and not self.decision.upload:
                log.warning(
                    "interruption: notice -> stopped without saving in %.1fs (%s); exit %d",
                    elapsed,
                    self.decision.reason,
                    ExitCode.INTERRUPTED,
                )
                return control
            self.notice_to_commit_s = elapsed
            log.warning(
                "interruption: notice -> checkpoint of step %s committed in %.1fs; exit %d",
                self.interrupted_at_step,
                self.notice_to_commit_s,
                ExitCode.INTERRUPTED,
            )
            return control

    InterruptionCallback.__qualname__ = "InterruptionCallback"
    return InterruptionCallback


def __getattr__(name: str) -> Any:
    # The callback subclasses transformers' TrainerCallback; building it on first use keeps
    # `import trainer.spot` (and so `invoke --list`) free of the 2-3 s transformers import.
    if name == "InterruptionCallback":
        cls = _build_interruption_callback()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
