"""The launchers' exit-code conventions for a child killed by a signal, in words.

Pure and import-free (the run protocol's ``verdict`` command prints it on every node): a rank
killed by ``kill -9`` reaches the launcher as ``-9`` from ``Popen``, leaves DeepSpeed's launcher
as ``256 − 9 = 247`` and a shell as ``128 + 9 = 137``.
"""

from __future__ import annotations

import signal


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def exit_signal(code: int | None) -> tuple[int, str] | None:
    """The signal a launcher's exit code stands for, and by which convention; None for a plain code.

    - negative ``-N``: Python's ``Popen.returncode`` for a child killed by signal N;
    - ``256 - N`` (193..255): DeepSpeed's launcher, which calls ``sys.exit`` with its rank's
      negative return code (a rank killed by SIGKILL → ``sys.exit(-9)`` → exit status 247);
    - ``128 + N`` (129..192): a shell (the node script's ``bash``) for a child killed by signal N.
    """
    if code is None:
        return None  # the run protocol's own codes (0, 2, 3, 75) lie outside every range below
    if code < 0:
        return -code, "killed"
    if 256 - 64 < code < 256:
        return 256 - code, f"DeepSpeed's launcher exits 256 − {256 - code} = {code}"
    if 128 < code <= 128 + 64:
        return code - 128, f"the shell's 128 + {code - 128} = {code}"
    return None


def describe_exit(code: int | None, *, who: str = "a rank") -> str:
    """Words for a launcher's exit code that name the signal behind it (``who`` did it)."""
    sig = exit_signal(code)
    if sig is not None:
        n, how = sig
        name = _signal_name(n)
        detail = "" if how == "killed" else f"; {how}"
        return f"{who} was killed by signal {n} ({name}{detail})"
    if code is None:
        return f"{who} ended with no exit code"
    return f"{who} exited with code {code} without recording why"
