"""Which rank ended first: DeepSpeed's launcher only reports an exit code (``256 − N`` for a rank
killed by signal N), not which of its ranks it came from.

Used by both launchers of the run protocol: the local one (:mod:`trainer.launch.single_node`) polls
:class:`RankWatch` while it waits for DeepSpeed's runner; a cluster node's script
(:mod:`trainer.launch.node_script`) starts ``python -m trainer.launch.rank_watch $$ FILE`` beside
its launcher and passes the name it wrote ("rank 5") to ``python -m artifacts.ending`` — so a
``kill -9`` on a p4d node is recorded as "rank 5 on node 1 was killed by signal 9 (…)".

A rank is the topmost process of a chain that carries ``RANK`` in its environment (the launcher
sets it per rank; a rank's own children — upload processes, data workers — inherit it and are
not ranks). The rank that vanishes first is the one whose exit ended the launch: the launcher
notices a dead rank within its own 1 s poll and only then terminates the others.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["RankWatch", "main"]


class RankWatch:
    """Polled every :attr:`POLL_S` while the launcher under ``root_pid`` runs."""

    POLL_S = 0.2

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.seen: dict[int, int] = {}  # pid -> rank
        self.not_ranks: set[int] = set()  # decided once, not read again every poll
        self.first_gone: list[int] = []

    def poll(self) -> None:
        import psutil

        try:
            tree = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:
            return
        live = set()
        for p in tree:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its launcher
                    live.add(p.pid)
            except psutil.Error:
                pass
        for p in tree:
            if p.pid in self.seen or p.pid in self.not_ranks:
                continue
            try:
                rank = p.environ().get("RANK")
                parent = p.parent()
                if (
                    rank is None
                    or not rank.isdigit()
                    or (parent is not None and parent.environ().get("RANK") == rank)
                ):  # a rank's own child (uploader, data worker) inherits RANK
                    self.not_ranks.add(p.pid)
                    continue
            except psutil.Error:
                continue  # gone, or not readable yet: the next poll decides
            self.seen[p.pid] = int(rank)
        if not self.first_gone:
            self.first_gone = sorted(r for pid, r in self.seen.items() if pid not in live)

    def who(self) -> str:
        """``rank 1`` when one rank ended first, else ``a rank``."""
        if len(self.first_gone) == 1:
            return f"rank {self.first_gone[0]}"
        if self.first_gone:
            return "one of ranks " + ", ".join(map(str, self.first_gone))
        return "a rank"


def main(argv: list[str]) -> int:
    """``python -m trainer.launch.rank_watch ROOT_PID FILE``: watch ROOT_PID's ranks; write the
    name of the first one to end to FILE (atomically) as soon as it is known; say on stderr which
    ranks it watches. Exits when ROOT_PID does, or when signalled (the node script stops it once
    its launcher has exited)."""
    import psutil

    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m trainer.launch.rank_watch ROOT_PID FILE", file=sys.stderr)
        return 2
    watch, out = RankWatch(int(argv[0])), Path(argv[1])
    known: list[int] = []
    while psutil.pid_exists(watch.root_pid):
        watch.poll()
        if sorted(watch.seen.values()) != known:
            known = sorted(watch.seen.values())
            print(f"rank_watch: watching rank(s) {', '.join(map(str, known))} under pid "
                  f"{watch.root_pid}", file=sys.stderr, flush=True)  # fmt: skip
        if watch.first_gone:
            tmp = out.with_name(f".{out.name}.{os.getpid()}")
            tmp.write_text(watch.who() + "\n")
            tmp.replace(out)
            return 0
        time.sleep(RankWatch.POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
