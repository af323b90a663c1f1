"""One launch attempt: the command on each node, and what their results say.

:meth:`Attempt.check` polls the commands still running (through the
:class:`~trainer.launch.ports.CommandRunner`); :meth:`Attempt.verdict` is the pure reading of the
results: a node that exited 75 or whose command SSM cut short means "resume", any other
non-zero exit means "failed".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from artifacts.run import ExitCode, RunState, Status, verdict
from trainer.launch.ports import (
    LIVE_STATES,
    RESUMABLE_COMMAND,
    TERMINAL_COMMAND,
    Clock,
    CommandRunner,
    Invocation,
    Member,
    RunView,
)

log = logging.getLogger("trainer.launch.watch")  # the watcher's log lines, as before


@dataclass
class Attempt:
    """rank → (command id, instance id) of one launch, and the invocations that have ended."""

    commands: dict[int, tuple[str, str]]
    results: dict[int, Invocation] = field(default_factory=dict)

    @property
    def all_ended(self) -> bool:
        return len(self.results) == len(self.commands)

    def check(self, runner: CommandRunner, members: Mapping[str, Member]) -> tuple[str, str] | None:
        """Record the commands that ended; ("lost" | "interrupted" | "failed", detail) or None."""
        for rank, (cid, iid) in sorted(self.commands.items()):
            m = members.get(iid)
            if m is None or m.state not in LIVE_STATES or m.lifecycle.startswith("Terminat"):
                state = m.state if m else "gone"
                return "lost", f"node {rank} ({iid}) is {state}"
            if rank not in self.results:
                inv = runner.poll(cid, iid)
                if inv.status in TERMINAL_COMMAND:
                    self.results[rank] = inv
        return self.verdict()

    def verdict(self) -> tuple[str, str] | None:
        """("interrupted" | "failed", detail) from the ended commands; None while none says so."""
        results = self.results
        for rank, inv in sorted(results.items()):
            code = verdict(inv.exit_code, None) if inv.exit_code is not None else None
            if code is ExitCode.INTERRUPTED or inv.status in RESUMABLE_COMMAND:
                return "interrupted", f"node {rank} exited {inv.exit_code} ({inv.status}): resume"
        for rank, inv in sorted(results.items()):
            if inv.exit_code != ExitCode.OK or inv.status != "Success":
                return "failed", f"node {rank} failed with exit code {inv.exit_code} ({inv.status})"
        return None

    def running(self, live: set[str]) -> dict[int, tuple[str, str]]:
        """The commands not ended yet on instances still live."""
        return {
            r: (cid, iid)
            for r, (cid, iid) in self.commands.items()
            if r not in self.results and iid in live
        }


def stop_commands(
    runner: CommandRunner,
    running: dict[int, tuple[str, str]],
    *,
    stop_script: str,
    clock: Clock,
    grace_s: float,
    poll_s: float,
    on_wait: Callable[[int], None],
) -> None:
    """SIGTERM (they commit and exit 75); cancel what outlives the grace."""
    for _, iid in running.values():
        runner.send(iid, stop_script, comment="twostage stop")
    deadline = clock.now() + grace_s
    while running and clock.now() < deadline:
        on_wait(len(running))
        clock.sleep(min(poll_s, 30.0))
        for r, (cid, iid) in list(running.items()):
            if runner.poll(cid, iid).status in TERMINAL_COMMAND:
                del running[r]
    for r, (cid, _) in running.items():
        log.warning("node %d did not exit within %.0f s: cancelling", r, grace_s)
        runner.cancel(cid)


def record_ending(run: RunView, kind: str, detail: str) -> Status | None:
    """Record how an attempt ended when its trainers could not (the status still claims a live run).

    A rank killed by a signal, a node that failed before its trainer wrote anything, or a
    trainer whose last status write failed in a store outage leaves ``running`` (or
    ``preparing``) behind; the controller saw the exit and says so. A status that already
    records an ending (the trainers' own words) is kept, and so is a status that cannot be read
    (none yet, or the store is down: a fresh one would drop step and history). Returns what was
    written.
    """
    if kind not in ("interrupted", "failed"):
        return None  # lost nodes and grow-backs: the survivors commit and record it themselves
    status = run.read_status()
    if status is None or not status.state.live:
        return None
    state = RunState.INTERRUPTED if kind == "interrupted" else RunState.FAILED
    settled = status.evolve(state=state, reason=detail)
    try:
        run.write_status(settled)
    except Exception as err:  # noqa: BLE001 - supervision goes on; the next attempt rewrites it
        log.warning("could not record the attempt's ending in the run's status: %s", err)
        return None
    return settled
