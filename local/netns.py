"""The kernel air gap: run a function in a child in a fresh network namespace.

``unshare -rn`` (a new user + network namespace; works as root, or where unprivileged user
namespaces are enabled) gives the child only a loopback interface: every outbound connect from
it — subprocesses (``curl``, ``python -c``, ``os.system``), spawn/forkserver children, ctypes or
``_socket`` calls — fails with "Network is unreachable" at once, and DNS fails. The in-process
guard (``local.airgap``) still runs inside, for messages that name the code that tried.

Generic: the child runs a function named ``module:function`` (it takes and returns plain JSON
data) and knows nothing else of the caller. The request, which may carry a secret (the
fine-tune's key, loaded by the parent because a KMS unwrap needs the network), goes to the child
over a pipe (never a file); the child sends back the result or the one-line error of a
:class:`~artifacts.errors.UserError` over another pipe. The log says which isolation is active:
``air gap: network namespace (kernel) + in-process guard`` or ``air gap: in-process guard only``.
``--airgap-strict`` refuses to run without the namespace.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any

from local.errors import LocalError

log = logging.getLogger(__name__)

NAMESPACE = "network namespace (kernel) + in-process guard"
GUARD = "in-process guard only"
_RESULT_FD_ENV = "TWOSTAGE_NETNS_RESULT_FD"


def _command() -> list[str] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    # Bring loopback up where `ip` exists (a fresh namespace starts with lo down).
    boot = 'command -v ip >/dev/null && ip link set lo up 2>/dev/null; exec "$@"'
    return [unshare, "-rn", "sh", "-c", boot, "sh"]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Can this process start a child in a fresh network namespace (tried once, cheaply)?"""
    cmd = _command()
    if cmd is None:
        return False
    try:
        done = subprocess.run([*cmd, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose(*, strict: bool, allowed: bool = True) -> str:
    """Which isolation an air-gapped run gets; logs it. ``strict`` refuses the guard alone."""
    if allowed and available():
        log.info("air gap: %s", NAMESPACE)
        return NAMESPACE
    if strict:
        raise LocalError(
            "--airgap-strict: cannot create a network namespace here (`unshare -rn` failed: needs "
            "root or unprivileged user namespaces, e.g. sysctl kernel.unprivileged_userns_clone=1); "
            "drop --airgap-strict to run with the in-process guard only"
        )
    log.warning("air gap: %s (no network namespace available: subprocesses are not cut off)", GUARD)
    return GUARD


def run_in_namespace(target: str, request: dict[str, Any], pass_fds: tuple[int, ...] = ()) -> Any:
    """``target(request)`` (``target`` is ``"module:function"``) run in a child in a fresh
    network namespace, inside the offline switches; its return value, or its one-line user
    error raised here as a :class:`LocalError`. ``pass_fds`` stay open in the child under the
    same numbers (e.g. a terminal for ``invoke generate --chat``: the child's stdin is the
    request pipe)."""
    cmd = _command()
    assert cmd is not None
    read_fd, write_fd = os.pipe()
    env = {**os.environ, _RESULT_FD_ENV: str(write_fd)}
    proc = subprocess.Popen(
        [*cmd, sys.executable, "-m", "local.netns", target],
        stdin=subprocess.PIPE,
        env=env,
        pass_fds=(write_fd, *pass_fds),
    )
    os.close(write_fd)
    try:
        proc.stdin.write(json.dumps(request).encode())  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        with os.fdopen(read_fd, "rb") as f:
            reply = f.read()
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if not reply:
        raise LocalError(
            f"the isolated child ({target}) exited with code {code} and no result (see log above)"
        )
    doc = json.loads(reply)
    if "error" in doc:
        raise LocalError(doc["error"])
    return doc["result"]


def _child(target: str) -> int:
    """Entry point inside the namespace: read the request, run ``target``, reply."""
    import importlib

    from artifacts.errors import UserError
    from artifacts.logs import init_logging
    from local.airgap import enable_offline_env

    enable_offline_env()
    init_logging()
    log.info("air gap: running in network namespace %s", os.readlink("/proc/self/ns/net"))
    out = os.fdopen(int(os.environ.pop(_RESULT_FD_ENV)), "wb")
    request = json.loads(sys.stdin.buffer.read())
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    try:
        result = function(request)
    except UserError as err:  # LocalError, VerificationError, …: one line for the parent
        out.write(json.dumps({"error": str(err)}).encode())
        out.close()
        return 2
    out.write(json.dumps({"result": result}).encode())
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
