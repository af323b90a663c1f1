"""What a run's exit means: the exit codes of the documented contract and the one rule that
judges an exit, :func:`verdict`.

Every launcher (the local one, the per-node script, the watcher, the demo) applies the same rule
instead of restating it, so it lives in one small module beside the status it reads
(:mod:`artifacts.status`). The node script reaches it through ``python -m artifacts.run verdict``,
whose command (:func:`artifacts.run.verdict_cli`) also reads the run's status; the number 75 is
spelled here and nowhere else (a test checks it). A signal behind an exit code is put in words
by :mod:`artifacts.exits`.
"""

from __future__ import annotations

from enum import IntEnum

from artifacts.status import RunState, Status


class ExitCode(IntEnum):
    """Exit codes of the trainer, the per-node script and ``invoke pretrain`` (documented contract)."""

    OK = 0
    """Finished: converged, or reached the epoch/step limit; ``final/`` is published."""
    FAILED = 1
    """A failure that is not the user's: look at the log."""
    USER = 2
    """A user error (config, URI, flag, file): one line says what to fix; nothing was lost."""
    BOOT = 3
    """The node could not start the trainer (bootstrap unfinished, wrong node, no config)."""
    INTERRUPTED = 75
    """Interrupted (spot notice, stop, store outage) after committing: relaunch the same run (EX_TEMPFAIL)."""


def verdict(exit_code: int | None, status: Status | None) -> ExitCode:
    """What a rank's (or launcher's) exit means, given the run's status: the one rule everyone uses.

    - The status says done (converged/finished) → OK, whatever the code: a rank can abort at
      interpreter shutdown after everything was committed.
    - The status says interrupted, or the code is 75 → INTERRUPTED (relaunch, it resumes).
    - Code 2 → USER; code 3 → BOOT.
    - Code 0 without a done status → FAILED: the trainer exits 0 only after publishing and
      writing the status, so a missing or unfinished status means something went wrong.
    - Anything else → FAILED.
    """
    state = status.state if status is not None else None
    if state is not None and state.done:
        return ExitCode.OK
    if state is RunState.INTERRUPTED or exit_code == ExitCode.INTERRUPTED:
        return ExitCode.INTERRUPTED
    if exit_code == ExitCode.USER:
        return ExitCode.USER
    if exit_code == ExitCode.BOOT:
        return ExitCode.BOOT
    return ExitCode.FAILED
