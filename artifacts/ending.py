"""How a run ended, when the run itself could not say: the launchers' exit conventions and the
status whoever sees the exit next records.

A rank killed by ``kill -9`` or the OOM killer, or a trainer whose last status write failed
during a store outage, leaves ``STATUS.json`` claiming work in progress. The local launcher, the
node script and the controller see the exit next; :func:`settle` (pure) tells them what to
record, in the words :func:`describe_exit` finds for the exit code — including the conventions
of the launchers in between (DeepSpeed's launcher exits ``256 − N`` for a rank killed by signal
N, a shell ``128 + N``).
"""

from __future__ import annotations

from artifacts.exits import describe_exit, exit_signal
from artifacts.run import ExitCode, RunState, Status, now_iso, verdict

__all__ = ["STATUS_FALLBACK_ENV", "describe_exit", "exit_signal", "settle"]

#: The launcher sets this to a local file; rank 0 writes there the status it could not put in
#: the store before exiting (an outage), and the launcher records it (:func:`settle`).
STATUS_FALLBACK_ENV = "TWOSTAGE_STATUS_FALLBACK"


def settle(
    status: Status | None, exit_code: int | None, *, who: str = "a rank", unwritten: Status | None = None
) -> Status | None:
    """The status to record when the ranks exited without recording their ending; None if it stands.

    Whoever sees the exit next (the local launcher, the node script, the controller) calls it
    so that ``STATUS.json`` never says "running" for a dead run. ``unwritten``: the status the
    trainer meant to write but could not (the store was down); it is recorded as it is when it
    agrees with the verdict. Step, epoch and history of ``status`` are kept.
    """
    if status is not None and not status.state.live:
        return None  # the run recorded its own ending (or is done): it tells the truth
    code = verdict(exit_code, status)
    if code is ExitCode.OK:
        return None
    if unwritten is not None and not unwritten.state.live:
        return unwritten.evolve()
    if code is ExitCode.INTERRUPTED:
        state, reason = RunState.INTERRUPTED, (
            f"{who} exited {int(ExitCode.INTERRUPTED)} (interrupted: resume) but its status could "
            "not be written (store unreachable?); see its log"
        )
    elif code is ExitCode.USER:
        state, reason = RunState.FAILED, f"{who} stopped on a user error (exit 2); see its log"
    elif code is ExitCode.BOOT:
        state, reason = RunState.FAILED, f"{who} could not start the trainer (exit 3)"
    elif exit_code == ExitCode.OK:
        state, reason = RunState.FAILED, f"{who} exited 0 but the run was never marked done"
    else:
        state, reason = RunState.FAILED, describe_exit(exit_code, who=who)
    if status is None:
        return Status(state=state, reason=reason, updated_at=now_iso())
    return status.evolve(state=state, reason=reason)
