"""Run the trainer on this machine through the DeepSpeed launcher (``invoke pretrain --local``).

``deepspeed --num_gpus N --master_port <free> --module trainer --config ... --run ...`` starts N
ranks (on a CPU-only machine DeepSpeed's launcher starts N CPU ranks; the trainer's
``cpu_compat`` takes it from there). Each run gets a free port, ``OMP_NUM_THREADS=1`` per rank
unless set, and its own process group so Ctrl-C / SIGTERM reach every rank (which then save and
exit 75). Success is judged by the trainer's ``STATUS.json``, not by the exit code alone: in rare
runs a rank aborts at interpreter shutdown after everything was committed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from trainer.errors import TrainerError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERRUPTED = 75
EXIT_FAILED = 1


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


def judge(returncode: int, status: dict | None) -> int:
    """The exit code of a local run from the launcher's code and the trainer's ``STATUS.json``."""
    state = (status or {}).get("state")
    if state in ("converged", "finished"):
        if returncode != 0:
            log.warning(
                "launcher exited %d but the run is %s and committed; treating it as success",
                returncode,
                state,
            )
        return EXIT_OK
    if state == "interrupted":
        return EXIT_INTERRUPTED
    if returncode == 2:
        return 2
    if returncode == 0:
        log.error("launcher exited 0 but STATUS.json says %r: treating it as a failure", state)
        return EXIT_FAILED
    return returncode if returncode > 0 else EXIT_FAILED


def launch_local(config: Path, run: str | None, nproc: int = 2) -> int:
    """Train ``config`` with ``nproc`` local ranks into ``run`` (default ``runs/<name>-<time>``).

    Returns 0 (converged or epoch limit), 75 (interrupted: relaunch with the same ``run`` to
    resume), 2 (user error) or another non-zero code (failure).
    """
    from trainer.__main__ import default_run_uri
    from trainer.config import load_config
    from trainer.finish import read_status
    from trainer.train import free_port

    if nproc < 1:
        raise TrainerError(f"--nproc must be >= 1, got {nproc}")
    cfg = load_config(config)  # fail fast, before starting ranks
    run = run or cfg.run.uri or default_run_uri(cfg.run.name)
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
    code = judge(returncode, read_status(run))
    if code == EXIT_OK:
        log.info("run %s finished; final model under %s/final", run, run)
    elif code == EXIT_INTERRUPTED:
        log.warning("run %s was interrupted; resume with --run %s", run, run)
    else:
        log.error("run %s failed (launcher exit %d)", run, returncode)
    return code
