"""How a run ended, when the run itself could not say: the launchers' exit conventions and the
status whoever sees the exit next records.

A rank killed by ``kill -9`` or the OOM killer, or a trainer whose last status write failed
during a store outage, leaves ``STATUS.json`` claiming work in progress. The local launcher, the
node script and the controller see the exit next; :func:`settle` (pure) tells them what to
record, in the words :func:`describe_exit` finds for the exit code — including the conventions
of the launchers in between (DeepSpeed's launcher exits ``256 − N`` for a rank killed by signal
N, a shell ``128 + N``).

On a cluster the node script runs ``python -m artifacts.ending RC RUN_URI WHO`` after its
launcher exits (:func:`record_failure`, then the verdict of ``python -m artifacts.run verdict``):
the code it passes on to SSM and the controller is the verdict's (a rank killed by signal 9 →
DeepSpeed's 247 → 1), so the node, which alone still holds the launcher's code, records the
ending in the launcher's words before that code is lost.
"""

from __future__ import annotations

import sys

from artifacts.exits import describe_exit, exit_signal
from artifacts.run import ExitCode, Run, RunState, Status, now_iso, verdict, verdict_cli

__all__ = ["STATUS_FALLBACK_ENV", "describe_exit", "exit_signal", "record_failure", "settle"]

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


def record_failure(run: Run, exit_code: int, *, who: str) -> Status | None:
    """Record :func:`settle`'s status for a launcher exit whose verdict is FAILED; what was written.

    Only FAILED loses information on its way to the controller (every code it covers becomes
    1); an interrupted (75), user (2) or boot (3) exit reaches the controller as it is and the
    controller records it (it also knows whether a node was lost). A status that cannot be read
    (the store is down: ``exists`` raises; or it is being rewritten) is never replaced by a
    fresh one, which would drop step and history: the controller records the ending then.
    """
    exists = run.store.exists(Run.STATUS)  # raises while the store is down
    current = run.read_status() if exists else None
    if exists and current is None:
        return None  # unreadable now (being rewritten): the controller records the ending
    if verdict(exit_code, current) is not ExitCode.FAILED:
        return None
    settled = settle(current, exit_code, who=who)
    if settled is not None:
        run.write_status(settled)
    return settled


def main(argv: list[str]) -> int:
    """``python -m artifacts.ending EXIT_CODE RUN_URI WHO``: record a failed ending, then the verdict.

    The node script's last word (``WHO``: "rank 5 on node 1"; "a rank on node 1" when its rank
    watch could not tell): :func:`record_failure`, then ``python -m artifacts.run verdict``'s
    line and exit code. Recording is best effort — the verdict (what the node exits with) never
    depends on the store.
    """
    if len(argv) != 3:
        print("usage: python -m artifacts.ending EXIT_CODE RUN_URI WHO", file=sys.stderr)
        return ExitCode.USER
    try:
        rc = int(argv[0])
    except ValueError:
        return verdict_cli(["verdict", *argv[:2]])  # says why in the verdict's own words
    try:
        settled = record_failure(Run(argv[1]), rc, who=argv[2])
    except Exception as err:  # noqa: BLE001 - the controller records it instead; say why
        print(f"warning: could not record the ending in the run's status ({err})", file=sys.stderr)
    else:
        if settled is not None:
            print(f"twostage: recorded in the run's status: {settled.state} ({settled.reason})")
    return verdict_cli(["verdict", *argv[:2]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
