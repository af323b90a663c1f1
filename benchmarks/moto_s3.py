"""moto's S3 server as its own process on 127.0.0.1, for benchmarks.

Its own process because S3 is another machine: an in-process server would share the client's GIL
and the benchmark would measure that contention. ``nice`` 19 because S3's CPU is not ours either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto_s3(
    env: dict[str, str] | None = None, *, nice: int = 19, timeout: float = 60.0
) -> subprocess.Popen:
    """Start the server, wait until it accepts connections, point boto3 at it.

    Sets ``AWS_ENDPOINT_URL`` and dummy credentials in ``os.environ`` (and in ``env``, the
    environment of child processes, when given). The caller terminates the returned process.
    """
    port = _free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit(f"moto server did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)
    settings = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "bench"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "bench"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    os.environ.update(settings)
    if env is not None:
        env.update(settings)
    return server
