"""The worker processes of ``prepare-data``: units out, progress back, stopped on bad input.

One :class:`WorkerPool` serves every stage of a preparation (dedup scan, partition joins,
tokenizing), so its processes are spawned once, not once a stage: a spawn costs each worker
~0.3 CPU-s of start-up and imports, several % of a small corpus.

Spawned, not forked: the parent's tokenizer threads may already have run. Bad input in any unit
stops the pool at once (a big unit could run for minutes); Ctrl-C keeps every committed shard and
redoes the unit in flight next time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trainer.data.progress import Progress


class WorkerPool:
    """Up to ``workers`` spawned processes, started on the first stage with more than one job.

    A context manager: leaving it shuts the processes down (or ends them, after an error).
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: Any = None
        self._queue: Any = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self._pool is not None:
            if kind is None:
                self._pool.shutdown(wait=True)
            else:
                stop(self._pool)
            self._pool = None

    def release(self) -> None:
        """Shut the processes down now (the next stage spawns them again): frees their memory
        while the parent needs it (``minhash``'s partition join)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def abort(self) -> None:
        """End the running units now (bad input: a big unit could run for minutes)."""
        if self._pool is not None:
            stop(self._pool)
            self._pool = None

    def executor(self) -> tuple[Any, Any]:
        """(the process pool, its progress queue), spawned on first use."""
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            from trainer.data.worker import init_worker

            ctx = mp.get_context("spawn")  # no fork of a process whose tokenizer threads already ran
            self._queue = ctx.Queue()
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=init_worker,
                initargs=(self._queue,),
            )  # fmt: skip
        return self._pool, self._queue


def run_units(
    jobs: Sequence[Any],
    workers: int | WorkerPool,
    progress: Progress,
    run: Callable[..., Any] | None = None,
    checked: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Run the jobs (in-process for one worker or one job, else in the pool); returns bad-input messages.

    ``workers``: a :class:`WorkerPool` shared by the stages, or a count (a pool for this call).
    ``run(job, progress)`` and its pool form ``checked(job)`` (module-level, so it pickles) default
    to the tokenizer's; the dedup scan passes its own.
    """
    from trainer.data import worker

    run = run or worker.run_job
    checked = checked or worker.run_job_checked
    if not isinstance(workers, WorkerPool):
        with WorkerPool(workers) as pool:
            return run_units(jobs, pool, progress, run, checked)
    errors: list[str] = []
    if workers.workers <= 1 or len(jobs) <= 1:
        from trainer.data.reading import BadInput

        for job in jobs:
            try:
                run(job, progress.advance)
            except BadInput as err:
                errors.append(str(err))
                break
        return errors
    from concurrent.futures import FIRST_COMPLETED, wait

    pool, q = workers.executor()
    _drain(q, None)  # a previous stage's last reports: its progress is closed
    pending = {pool.submit(checked, job) for job in jobs}
    while pending:
        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        for fut in done:
            result = fut.result()
            if result and "error" in result[0]:
                errors.append(result[0]["error"])
        _drain(q, progress)
        if errors:
            workers.abort()
            break
    _drain(q, progress)
    return errors


def _drain(q: Any, progress: Progress | None) -> None:
    """Apply (or drop, for ``None``) the progress reports waiting in the queue."""
    import queue as queue_mod

    while True:
        try:
            item = q.get_nowait()
        except queue_mod.Empty:
            return
        if progress is not None:
            progress.advance(*item)


def stop(pool: Any) -> None:
    """Cancel queued units and end the running ones now (a big unit could run for minutes)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API for this
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
