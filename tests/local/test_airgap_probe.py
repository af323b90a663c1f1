"""The air gap, probed from inside by a compromised dependency (issue 21's measure of "done").

A throw-away venv carries ``probe/twostage_probe.py`` and a ``.pth`` line that loads it in every
Python started from the venv, the sandboxed child included. When the fine-tune imports ``peft``
it tries every route out (``docs/airgap.md``): TCP and DNS to services of the host, filesystem
Unix sockets served in /tmp, /run and $HOME, an abstract socket, the D-Bus address from the
environment, /dev/shm both ways, files outside the output, ~/.aws and ~/.ssh, secrets in its own
and other processes' environments, SysV shared memory, being dumpable/ptrace-able.

Positive control: the same fine-tune without ``--airgapped`` reaches every one of them (so the
probe ran and each route is real); with ``--airgapped``, none.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import uuid
from pathlib import Path

import pytest
import qlora_helpers as h

from local import sandbox

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "probe" / "twostage_probe.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sandbox.bwrap_binary() is None, reason="bubblewrap (CI installs it)"),
]


def _serve(sock: socket.socket, stop: threading.Event) -> None:
    """Answer ``ack`` to every connection or datagram (the probe's proof of a round trip)."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            if sock.type == socket.SOCK_DGRAM:
                _, peer = sock.recvfrom(64)
                sock.sendto(b"ack", peer)
                continue
            conn, _ = sock.accept()
        except (TimeoutError, OSError):
            continue
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(64)
                conn.sendall(b"ack")
            except OSError:
                pass


class Host:
    """The host's side: services, secrets and the places a probe would plant something."""

    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.canary = f"probe-canary-{tag}"
        self.home = tmp / "home"
        (self.home / ".aws").mkdir(parents=True)
        (self.home / ".ssh").mkdir()
        (self.home / ".aws" / "credentials").write_text(f"aws_secret_access_key = {self.canary}\n")
        (self.home / ".ssh" / "id_ed25519").write_text(f"PRIVATE KEY {self.canary}\n")
        self.shm_secret = Path(f"/dev/shm/twostage-probe-{tag}-secret")
        self.shm_secret.write_text(self.canary)
        self.plants = {
            "write /dev/shm": Path(f"/dev/shm/twostage-probe-{tag}-plant"),
            "write a file outside the output": tmp / "outside-plant.txt",
            "write into $HOME": self.home / "planted.sh",
        }
        self.unix = {"/tmp": f"/tmp/twostage-probe-{tag}.sock", "$HOME": str(self.home / "s.sock")}
        if os.access("/run", os.W_OK):
            self.unix["/run"] = f"/run/twostage-probe-{tag}.sock"
        self.bus = str(self.home / "bus.sock")
        self.abstract = f"twostage-probe-{tag}"
        self.sysv_key = int(tag[:6], 16)
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        tcp = self._listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        udp = self._listen(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))
        for path in [*self.unix.values(), self.bus, "\0" + self.abstract]:
            self._listen(socket.AF_UNIX, socket.SOCK_STREAM, path)
        libc = ctypes.CDLL(None)
        self.shm_id = libc.shmget(ctypes.c_int(self.sysv_key), ctypes.c_size_t(4096), 0o1600)
        assert self.shm_id >= 0
        # Another process of this user holding a secret in its environment (a shell with keys).
        self.holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOLDER_SECRET": self.canary},
        )  # fmt: skip
        self.config = {
            "canary": self.canary, "tcp_port": tcp.getsockname()[1],
            "udp_port": udp.getsockname()[1], "abstract": self.abstract, "unix": self.unix,
            "shm_secret": str(self.shm_secret), "shm_plant": str(self.plants["write /dev/shm"]),
            "outside_plant": str(self.plants["write a file outside the output"]),
            "home_plant": str(self.plants["write into $HOME"]),
            "aws": str(self.home / ".aws" / "credentials"),
            "ssh": str(self.home / ".ssh" / "id_ed25519"), "sysv_key": self.sysv_key,
        }  # fmt: skip

    def _listen(self, family: int, kind: int, address) -> socket.socket:
        s = socket.socket(family, kind)
        s.bind(address)
        if kind == socket.SOCK_STREAM:
            s.listen(8)
        self.sockets.append(s)
        threading.Thread(target=_serve, args=(s, self.stop), daemon=True).start()
        return s

    def env(self) -> dict[str, str]:
        return {
            **os.environ, "HOME": str(self.home), "AWS_SECRET_ACCESS_KEY": self.canary,
            "SSH_AUTH_SOCK": self.unix["/tmp"], "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.bus}",
            "DISPLAY": ":0", "HTTPS_PROXY": "http://127.0.0.1:9",
        }  # fmt: skip

    def close(self) -> None:
        self.stop.set()
        self.holder.kill()
        self.holder.wait()
        for s in self.sockets:
            s.close()
        for path in [*self.unix.values(), self.shm_secret, *self.plants.values()]:
            Path(path).unlink(missing_ok=True)
        ctypes.CDLL(None).shmctl(self.shm_id, 0, None)  # IPC_RMID


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Two fine-tunes from the probed venv: without ``--airgapped`` and with it."""
    tmp = tmp_path_factory.mktemp("probe")
    host = Host(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    )
    parent_site = sysconfig.get_path("purelib")
    (site / "00_parent.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    shutil.copy(PROBE, site / PROBE.name)
    (site / "twostage_probe.json").write_text(json.dumps(host.config))
    (site / "zz_probe.pth").write_text("import twostage_probe; twostage_probe.arm()\n")
    model = h.verified_model(tmp)
    cipher, key = h.encrypted_dataset(tmp, name="data.enc")
    runs = {}
    try:
        for name, flags in (("open", []), ("airgapped", ["--airgapped"])):
            out = tmp / f"export-{name}"
            proc = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "invoke", "finetune", "--model", str(model),
                 "--data", str(cipher), "--key-file", str(key), "--out", str(out),
                 "--config", str(h.TINY_CONFIG), "--max-steps", "1", *flags],
                cwd=REPO, capture_output=True, text=True, timeout=600, env=host.env(),
            )  # fmt: skip
            reports = [
                json.loads(line.split(" ", 1)[1])
                for line in proc.stderr.splitlines()
                if line.startswith("TWOSTAGE-PROBE ")
            ]
            seen = {k: p.exists() for k, p in host.plants.items()}
            for p in host.plants.values():
                p.unlink(missing_ok=True)
            runs[name] = {"proc": proc, "reports": reports, "planted": seen, "out": out}
    finally:
        host.close()
    return runs


def _open_routes(run: dict) -> dict[str, bool]:
    """A route is open when the probe got through — for a write, when the file shows up here."""
    (report,) = run["reports"]
    routes = dict(report["routes"])
    for name, visible in run["planted"].items():
        routes[name] = routes[name] and visible
    return routes


def test_without_airgapped_the_probe_reaches_every_route(probed):
    run = probed["open"]
    assert run["proc"].returncode == 0, run["proc"].stderr[-3000:]
    assert len(run["reports"]) == 1, "the probe did not run (no transformers import?)"
    routes = _open_routes(run)
    assert len(routes) >= 16
    assert [name for name, ok in routes.items() if not ok] == []


def test_airgapped_the_probe_reaches_no_route_and_the_run_succeeds(probed):
    run = probed["airgapped"]
    assert run["proc"].returncode == 0, run["proc"].stderr[-3000:]
    # Exactly one report, from inside: the parent (key and network in reach) imports no ML code.
    assert len(run["reports"]) == 1, "the probe did not run inside the sandbox, or ran outside"
    assert run["reports"][0]["netns"] != os.readlink("/proc/self/ns/net")
    routes = _open_routes(run)
    assert set(routes) == set(_open_routes(probed["open"]))  # the very same routes were tried
    assert [name for name, ok in routes.items() if ok] == []
    from artifacts.verify import verify_dir

    assert verify_dir(run["out"]).metadata["isolation"] == "sandbox"
