"""The isolated child: run a ``module:function`` target in the air-gap sandbox.

Generic: the child runs a function named ``module:function`` (it takes and returns plain JSON
data) and knows nothing else of the caller, so any command (``finetune`` today; generate,
evaluate, export) can run inside. The request goes to the child over stdin, never a file; an
optional secret (the fine-tune's key, loaded by the parent because a KMS unwrap needs the
network) goes first on the same pipe as raw bytes, is read into a ``bytearray`` and given to the
target as ``request["secret"]``, and is wiped when the target returns. The child sends back the
result or the one-line error of a :class:`~artifacts.errors.UserError` over another pipe.

Isolation (``local.sandbox``): :data:`~local.sandbox.SANDBOX` — bubblewrap, the only one an
``--airgapped`` run accepts — or :data:`~local.sandbox.NAMESPACE` (``unshare -rn``, the
benchmark's baseline). :func:`choose` decides and fails closed: ``--airgapped`` without a
working sandbox is a one-line error, unless ``--airgap-guard-only`` accepts the weaker guard.
In the child, before the secret is read: no core dumps, not dumpable (``sandbox.harden``).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from typing import Any

from local import sandbox
from local.errors import LocalError

log = logging.getLogger(__name__)

_RESULT_FD_ENV = "TWOSTAGE_NETNS_RESULT_FD"
_LEN = struct.Struct(">I")


def choose(*, airgapped: bool, guard_only: bool = False, allowed: bool = True) -> str:
    """Which isolation a run gets (a ``local.sandbox`` label); logs it in one line.

    ``--airgapped`` fails closed: no sandbox here is a :class:`LocalError` that names what is
    missing and how to enable it (before any decryption). ``guard_only`` (``--airgap-guard-only``)
    accepts the in-process guard; ``allowed=False`` (tests) keeps the run in this process.
    """
    if not airgapped:
        if guard_only:
            raise LocalError("--airgap-guard-only needs --airgapped")
        log.warning("air gap: %s", sandbox.DESCRIBE[sandbox.NONE])
        return sandbox.NONE
    if guard_only or not allowed:
        log.warning("air gap: %s", sandbox.DESCRIBE[sandbox.GUARD])
        return sandbox.GUARD
    why = sandbox.missing()
    if why is not None:
        raise LocalError(
            f"--airgapped: cannot build the sandbox: {why}; or pass --airgap-guard-only to accept "
            "the weaker in-process guard (recorded in the export manifest)"
        )
    log.info("air gap: %s (%s)", sandbox.DESCRIBE[sandbox.SANDBOX], sandbox.bwrap_version())
    return sandbox.SANDBOX


def run_isolated(
    target: str,
    request: dict[str, Any],
    *,
    isolation: str = sandbox.SANDBOX,
    plan: sandbox.Plan | None = None,
    secret: bytes | bytearray = b"",
    pass_fds: tuple[int, ...] = (),
) -> Any:
    """``target(request)`` (``target`` is ``"module:function"``) run in an isolated child; its
    return value, or its one-line user error raised here as a :class:`LocalError`. ``pass_fds``
    stay open in the child under the same numbers (e.g. a terminal for ``invoke generate
    --chat``: the child's stdin is the request pipe)."""
    if isolation == sandbox.SANDBOX:
        cmd = sandbox.command(plan or sandbox.Plan())
        env = sandbox.child_env()
    elif isolation == sandbox.NAMESPACE:
        cmd = sandbox.unshare_command() or []
        if not cmd:
            raise LocalError("cannot create a network namespace here: `unshare` is not installed")
        env = dict(os.environ)
    else:
        raise ValueError(f"not an isolated child: {isolation!r}")
    read_fd, write_fd = os.pipe()
    env[_RESULT_FD_ENV] = str(write_fd)
    proc = subprocess.Popen(
        [*cmd, sys.executable, "-m", "local.netns", target],
        stdin=subprocess.PIPE,
        env=env,
        pass_fds=(write_fd, *pass_fds),
    )
    os.close(write_fd)
    try:
        proc.stdin.write(_LEN.pack(len(secret)) + bytes(secret))  # type: ignore[union-attr]
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
        raise LocalError(f"the isolated child exited with code {code} and no result (see log above)")
    doc = json.loads(reply)
    if "error" in doc:
        raise LocalError(doc["error"])
    return doc["result"]


def _read_exact(f: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise EOFError("request pipe closed early")
        got += k
    return buf


def _child(target: str) -> int:
    """Entry point inside the sandbox: harden, read the request, run ``target``, reply."""
    import importlib

    sandbox.harden()  # before the secret arrives
    from artifacts.errors import UserError
    from artifacts.logs import init_logging
    from local.airgap import enable_offline_env

    enable_offline_env()
    init_logging()
    log.info("air gap: running in network namespace %s", os.readlink("/proc/self/ns/net"))
    out = os.fdopen(int(os.environ.pop(_RESULT_FD_ENV)), "wb")
    stdin = sys.stdin.buffer
    secret = _read_exact(stdin, _LEN.unpack(_read_exact(stdin, _LEN.size))[0])
    request = json.loads(stdin.read())
    if secret:
        request["secret"] = secret
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    try:
        result = function(request)
    except UserError as err:  # LocalError, VerificationError, …: one line for the parent
        out.write(json.dumps({"error": str(err)}).encode())
        out.close()
        return 2
    finally:
        secret[:] = bytes(len(secret))  # the master key: wiped as soon as the target is done
    out.write(json.dumps({"result": result}).encode())
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
