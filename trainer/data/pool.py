"""The tokenizer pool of ``prepare-data``: units in spawned worker processes, progress back.

Spawned, not forked: the parent's tokenizer threads may already have run. Bad input in any unit
stops the pool at once (a big unit could run for minutes); Ctrl-C keeps every committed shard and
redoes the unit in flight next time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trainer.data.progress import Progress


def run_units(
    jobs: Sequence[Any],
    workers: int,
    progress: Progress,
    run: Callable[..., Any] | None = None,
    checked: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Run the jobs (in-process for one worker, else a spawn pool); returns bad-input messages.

    ``run(job, progress)`` and its pool form ``checked(job)`` (module-level, so it pickles) default
    to the tokenizer's; the dedup scan passes its own.
    """
    from trainer.data import worker
    from trainer.data.worker import init_worker

    run = run or worker.run_job
    checked = checked or worker.run_job_checked
    errors: list[str] = []
    if workers <= 1 or len(jobs) <= 1:
        from trainer.data.sources import BadInput

        for job in jobs:
            try:
                run(job, progress.advance)
            except BadInput as err:
                errors.append(str(err))
                break
        return errors
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process whose tokenizer threads already ran
    q = ctx.Queue()
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=init_worker, initargs=(q,)
    ) as pool:
        pending = {pool.submit(checked, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    if result and "error" in result[0]:
                        errors.append(result[0]["error"])
                while True:
                    try:
                        progress.advance(*q.get_nowait())
                    except queue_mod.Empty:
                        break
                if errors:
                    stop(pool)
                    break
        except BaseException:
            stop(pool)  # Ctrl-C: committed shards stay, the unit in flight is redone next time
            raise
    return errors


def stop(pool: Any) -> None:
    """Cancel queued units and end the running ones now (a big unit could run for minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
