"""Run the trainer on this machine through the DeepSpeed launcher (``invoke pretrain --local``).

Data preparation (``trainer.data.prepare``) runs first, in this process, so a user sees its progress
bar and a bad corpus fails before any rank starts. Then
``deepspeed --num_gpus N --master_port <free> --module trainer --config ... --run ...`` starts N
ranks (on a CPU-only machine DeepSpeed's launcher starts N CPU ranks; the trainer's
``cpu_compat`` takes it from there). Each run gets a free port, ``OMP_NUM_THREADS=1`` per rank
unless set, and its own process group so Ctrl-C / SIGTERM reach every rank (which then save and
exit :data:`~artifacts.run.ExitCode.INTERRUPTED`). Success is judged by the run protocol's
:func:`~artifacts.run.verdict` over the exit code and the run's status: in rare runs a rank aborts
at interpreter shutdown after everything was committed.

Laptop side: imports the trainer's config loader (to fail fast) and the run protocol, never the
node-side training stack.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from artifacts.run import ExitCode, Run, RunState, Status, now_iso, verdict
from trainer.config import TrainerConfig
from trainer.errors import TrainerError

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
    proc = subprocess.Popen(cmd, env=launcher_env(), start_new_session=True)

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
    try:
        returncode = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    status = Run(run).read_status()
    code = verdict(returncode, status)
    resume = resume_hint(config, run, nproc)
    if code is ExitCode.FAILED and (
        status is None or status.state in (RunState.RUNNING, RunState.PREPARING)
    ):
        # A rank died without a word (killed, OOM, segfault): the status would say "running"
        # forever. The launcher knows better and says so; step and history are kept.
        status = record_failure(Run(run), status, returncode)
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


def resume_hint(config: Path | str, run: str, nproc: int) -> str:
    """The command that resumes this run here (any ``--nproc``: the resume is elastic)."""
    return f"invoke pretrain --local --config {config} --run {run} --nproc {nproc}"


def record_failure(run: Run, status: Status | None, returncode: int) -> Status:
    """Mark the run failed with the launcher's reason, keeping its step and history."""
    reason = (
        f"a rank was killed by signal {-returncode}"
        if returncode < 0
        else f"a rank exited with code {returncode} without recording why"
    )
    failed = (
        status.evolve(state=RunState.FAILED, reason=reason)
        if status is not None
        else Status(state=RunState.FAILED, reason=reason, updated_at=now_iso())
    )
    try:
        run.write_status(failed)
    except Exception as err:  # noqa: BLE001 - the verdict stands; say why the status lags
        log.warning("could not record the failure in the run's status: %s", err)
    return failed
