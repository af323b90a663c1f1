"""Run the trainer on this machine through the DeepSpeed launcher (``invoke pretrain --local``).

Data preparation (``trainer.data.prepare``) runs first, in this process, so a user sees its progress
bar and a bad corpus fails before any rank starts. Then
``deepspeed --num_gpus N --master_port <free> --module trainer --config ... --run ...`` starts N
ranks (on a CPU-only machine DeepSpeed's launcher starts N CPU ranks; the trainer's
``cpu_compat`` takes it from there). Each run gets a free port, ``OMP_NUM_THREADS=1`` per rank
unless set, and its own process group so Ctrl-C / SIGTERM reach every rank (which then save and
exit :data:`~artifacts.run.ExitCode.INTERRUPTED`). Success is judged by the run protocol's
:func:`~artifacts.run.verdict` over the exit code and the run's status: in rare runs a rank aborts
at interpreter shutdown after everything was committed. An ending the ranks could not record (a
rank killed by a signal, a status write lost to a store outage) is recorded here
(:func:`record_ending`): it names the rank that ended first (:mod:`trainer.launch.rank_watch`) and the signal
behind DeepSpeed's ``256 − N`` exit code.

Laptop side: imports the trainer's config loader (to fail fast) and the run protocol, never the
node-side training stack.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from artifacts.ending import STATUS_FALLBACK_ENV, settle
from artifacts.run import ExitCode, Run, Status, verdict
from trainer.config import TrainerConfig
from trainer.errors import TrainerError
from trainer.launch.rank_watch import RankWatch

log = logging.getLogger(__name__)


def launcher_command(config: Path, run: str, nproc: int, port: int) -> list[str]:
    """The DeepSpeed launcher command line for ``nproc`` local ranks."""
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "--module",
        "trainer",
        "--config",
        str(config),
        "--run",
        run,
    ]


def launcher_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the ranks: one OMP thread each unless the user chose, unbuffered output."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def rank_processes(launcher_pid: int) -> list:
    """The trainer rank processes under the launcher (``python -u -m trainer ...``)."""
    import psutil

    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    ranks = []
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "trainer" in cmd and not any("deepspeed.launcher" in part for part in cmd):
            ranks.append(child)
    return ranks


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def launch_local(
    config: Path, run: str | None, nproc: int = 2, *, cfg: TrainerConfig | None = None
) -> int:
    """Train ``config`` with ``nproc`` local ranks into ``run`` (default ``runs/<name>-<time>``).

    ``cfg``: the recipe already loaded from ``config`` (the caller's copy; parsed here otherwise).

    Returns the :func:`~artifacts.run.verdict`: OK (converged or epoch limit), INTERRUPTED
    (relaunch with the same ``run`` to resume), USER (user error) or FAILED.
    """
    from artifacts.ports import free_port
    from trainer.config import load_config
    from trainer.env import run_uri

    if nproc < 1:
        raise TrainerError(f"--nproc must be >= 1, got {nproc}")
    cfg = cfg or load_config(config)  # fail fast, before starting ranks
    from trainer.loop.reporting import local_refusal

    refusal = local_refusal(cfg.eval.report_to, source=str(config))
    if refusal:  # else the Trainer raises on every rank, after the data is prepared
        raise TrainerError(refusal)
    run = run_uri(cfg.run, run)
    from trainer.checkpoint.elastic import plan_launch

    plan, facts = plan_launch(cfg, Run(run), nproc)  # a global batch it cannot hold: refused now
    if facts is not None and facts.world_size not in (None, nproc):
        log.info(
            "the newest checkpoint (step %d) was written by %d rank(s); resuming on %d with "
            "global batch %s",
            facts.step,
            facts.world_size,
            nproc,
            plan.describe(),
        )
    # Data first, here on the launcher's side with its progress bar: the ranks find it committed.
    from trainer.data.prepare import prepare_run

    prepare_run(cfg, run)
    cmd = launcher_command(Path(config), run, nproc, free_port())
    log.info("launching %d rank(s): run %s", nproc, run)
    handover = Path(tempfile.mkdtemp(prefix="twostage-status-")) / Run.STATUS
    env = {**launcher_env(), STATUS_FALLBACK_ENV: str(handover)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    signalled = []

    def forward(signum: int, frame: object) -> None:
        # First Ctrl-C / SIGTERM: SIGTERM to the ranks only (not to the launcher, which would
        # SIGTERM them a second time = "stop without saving"): they save, commit and exit 75.
        # A second one stops the whole process group at once.
        if signalled:
            _signal_group(proc.pid, signal.SIGKILL)
            return
        signalled.append(signum)
        log.warning("signal %d: asking the ranks to save and stop (again to kill)", signum)
        for rank_proc in rank_processes(proc.pid):
            try:
                rank_proc.send_signal(signal.SIGTERM)
            except Exception as err:  # noqa: BLE001 - a rank that already exited is fine
                log.debug("could not signal %s: %s", rank_proc, err)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    ranks = RankWatch(proc.pid)
    try:
        while True:
            try:
                returncode = proc.wait(timeout=RankWatch.POLL_S)
                break
            except subprocess.TimeoutExpired:
                ranks.poll()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = record_ending(Run(run), returncode, who=ranks.who(), handover=handover, cfg=cfg)
    code = verdict(returncode, status)
    resume = resume_hint(config, run, nproc)
    if code is ExitCode.OK:
        if returncode != 0:
            log.warning(
                "launcher exited %d but the run is %s and committed: success",
                returncode,
                status.state if status else "?",
            )
        log.info("run %s finished; final model under %s", run, Run(run).final_uri)
    elif code is ExitCode.INTERRUPTED:
        log.warning("run %s was interrupted (%s); resume: %s", run, _reason(status), resume)
    elif code is ExitCode.USER:
        log.error("run %s: user error (see above); fix it, then: %s", run, resume)
    else:
        log.error(
            "run %s failed (launcher exit %d: %s); resume from its last committed checkpoint: %s",
            run,
            returncode,
            _reason(status),
            resume,
        )
    return int(code)


def _reason(status: Status | None) -> str:
    return (status.reason if status is not None else None) or "no reason recorded"


def record_ending(
    run: Run, returncode: int, *, who: str, handover: Path | None, cfg: TrainerConfig
) -> Status | None:
    """The run's status after the launcher exited, recording the ending the ranks could not.

    A rank killed without a word (``kill -9``, the OOM killer) or a trainer whose last status
    write failed (store outage) leaves a status that claims a live run; the launcher records
    :func:`artifacts.ending.settle`'s status (the ranks' own, handed over in a local file, when
    they left one), retried through a short outage. Step and history are kept.
    """
    from trainer.checkpoint.outage import retry_through_outage

    window = min(cfg.run.store_outage_minutes * 60, 120.0)
    unwritten = None
    if handover is not None and handover.is_file():
        try:
            unwritten = Status.from_json(handover.read_text(encoding="utf-8"))
        except ValueError as err:
            log.warning("the ranks' status hand-over %s is unreadable: %s", handover, err)
    if handover is not None:
        shutil.rmtree(handover.parent, ignore_errors=True)

    def record() -> Status | None:
        # exists() raises while the store is down (retried): an unreachable status is never
        # mistaken for a missing one and overwritten without its step and history.
        current = run.read_status() if run.store.exists(Run.STATUS) else None
        settled = settle(current, returncode, who=who, unwritten=unwritten)
        if settled is not None:
            run.write_status(settled)
        return settled or current

    try:
        return retry_through_outage(record, what="the run's final status", window=window)
    except Exception as err:  # noqa: BLE001 - the verdict stands; say why the status lags
        settled = settle(None, returncode, who=who, unwritten=unwritten)
        log.warning(
            "could not record the run's ending (%s) in its status: %s",
            settled.state if settled else "none needed",
            err,
        )
        return settled


def resume_hint(config: Path | str, run: str, nproc: int) -> str:
    """The command that resumes this run here (any ``--nproc``: the resume is elastic)."""
    return f"invoke pretrain --local --config {config} --run {run} --nproc {nproc}"
