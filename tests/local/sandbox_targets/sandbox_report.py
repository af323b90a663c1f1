"""A ``module:function`` target for ``local.netns.run_isolated`` in tests: what the child sees.

Lives outside the package on purpose (tests put this folder on ``PYTHONPATH``): the runner is
generic, any importable target runs in the sandbox.
"""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path


def report(request: dict) -> dict:
    """Facts about the process it runs in; ``request["secret"]`` (a bytearray) is echoed as hex
    length only, and ``request["write"]`` names paths to try to create."""
    written = []
    for path in request.get("write", []):
        try:
            Path(path).write_text("x")
            written.append(path)
        except OSError:
            pass
    secret = request.get("secret")
    status = Path("/proc/self/status").read_text()
    return {
        "env": sorted(os.environ),
        "root": sorted(os.listdir("/")),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "netns": os.readlink("/proc/self/ns/net"),
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "dumpable": _dumpable(),
        "secret_type": type(secret).__name__,
        "secret_len": len(secret) if secret is not None else 0,
        "written": written,
        "home": sorted(os.listdir(os.path.expanduser("~"))),
        "tmp": sorted(os.listdir("/tmp")),
        "nnp": "NoNewPrivs:\t1" in status,
    }


def fail(request: dict) -> dict:
    from local.errors import LocalError

    raise LocalError("a one-line refusal from inside")


def _dumpable() -> int:
    import ctypes

    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
