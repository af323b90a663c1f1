"""The kernel air gap: a fresh network namespace cuts off subprocesses and C code too (the\nnamespace-only path is the benchmark's baseline; ``--airgapped`` runs the full sandbox)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from local import sandbox

needs_netns = pytest.mark.skipif(
    sandbox.unshare_command() is None, reason="no unshare here"
)

CONNECT = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.settimeout(5)\n"
    "try:\n"
    "    s.connect(('203.0.113.1', 80))\n"
    "except OSError as e:\n"
    "    print('blocked', e.errno); sys.exit(3)\n"
    "print('connected')\n"
)


@needs_netns
def test_python_c_socket_connect_is_blocked_inside():
    done = subprocess.run(
        [*sandbox.unshare_command(), sys.executable, "-c", CONNECT],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3 and "blocked 101" in done.stdout  # ENETUNREACH, at once


@needs_netns
def test_curl_and_dns_are_blocked_inside():
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    done = subprocess.run(
        [*sandbox.unshare_command(), "curl", "-sS", "--max-time", "5", "http://203.0.113.1/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0 and (
        "unreachable" in done.stderr.lower() or "connect" in done.stderr.lower()
    )
    dns = subprocess.run(
        [*sandbox.unshare_command(), sys.executable, "-c", "import socket; socket.gethostbyname('example.com')"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert dns.returncode != 0 and "gaierror" in dns.stderr


@needs_netns
def test_the_namespace_is_a_different_one_with_loopback_only():
    inside = subprocess.run(
        [*sandbox.unshare_command(), "readlink", "/proc/self/ns/net"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert inside.returncode == 0 and inside.stdout.strip() != os.readlink("/proc/self/ns/net")


@pytest.mark.skipif(sandbox.bwrap_binary() is None, reason="bubblewrap not installed")
@pytest.mark.slow
def test_invoke_finetune_airgapped_trains_inside_the_sandbox(tmp_path):
    from pathlib import Path

    import qlora_helpers as h

    from artifacts.verify import verify_dir

    model = h.verified_model(tmp_path)
    cipher, key = h.encrypted_dataset(tmp_path, name="data.enc")
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "finetune", "--model", str(model), "--data", str(cipher),
         "--key-file", str(key), "--out", str(out), "--airgapped",
         "--config", str(h.TINY_CONFIG), "--max-steps", "2"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "air gap: bubblewrap sandbox" in proc.stderr and "air gap: sandbox" in proc.stdout
    ns = [
        line.rsplit(" ", 1)[-1]
        for line in proc.stderr.splitlines()
        if "running in network namespace" in line
    ]
    assert ns and ns[0] != os.readlink("/proc/self/ns/net")
    meta = verify_dir(out).metadata
    assert meta["steps"] == 2 and meta["isolation"] == sandbox.SANDBOX and meta["swap"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]  # nothing left
