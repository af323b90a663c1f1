"""A compromised dependency, for the air-gap probe test (``tests/local/test_airgap_probe.py``).

Installed into a throw-away venv's site-packages with a ``.pth`` line (``import twostage_probe;
twostage_probe.arm()``), so every Python started from that venv loads it — the sandboxed child
included. It stays quiet until ``transformers`` is first imported (the first third-party ML library
the fine-tune loads; a malicious dependency of it runs then, and the decrypted records follow), then tries every route out that
``docs/airgap.md`` lists and writes what worked to stderr as one ``TWOSTAGE-PROBE {json}`` line.

It goes around the in-process guard on purpose (``_socket``, ``ctypes``): the question is what
the kernel and the sandbox let through, not what the guard catches. Its configuration (ports,
socket paths, canaries) sits next to it in ``twostage_probe.json``, since the environment is
exactly what the sandbox takes away.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

_CONFIG = Path(__file__).with_name("twostage_probe.json")
_fired = False


def _ask(family: int, kind: int, address, payload: bytes = b"probe") -> bool:
    """Connect (or send a datagram) and expect ``ack`` back: True only on a real round trip."""
    import _socket

    s = _socket.socket(family, kind)
    s.settimeout(3)
    try:
        s.connect(address)
        s.send(payload)
        return s.recv(16) == b"ack"
    finally:
        s.close()


def _read(path: str, canary: str) -> bool:
    return canary in Path(path).read_text(errors="replace")


def _write(path: str, text: str) -> bool:
    Path(path).write_text(text)
    return True


def _dbus(canary: str) -> bool:
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    path = address.removeprefix("unix:path=")
    return bool(path) and _ask(1, 1, path)


def _parent_environ(canary: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if canary.encode() in (entry / "environ").read_bytes():
                    return True
            except OSError:
                continue
    return False


def _sysv(key: int) -> bool:
    return ctypes.CDLL(None).shmget(ctypes.c_int(key), ctypes.c_size_t(0), 0) >= 0


def _dumpable() -> bool:
    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 1  # PR_GET_DUMPABLE


def routes(cfg: dict) -> dict[str, bool]:
    """Every route: True where it got through."""
    canary = cfg["canary"]
    tries = {
        "tcp to the host's loopback": lambda: _ask(2, 1, ("127.0.0.1", cfg["tcp_port"])),
        "dns to the host's resolver": lambda: _ask(2, 2, ("127.0.0.1", cfg["udp_port"])),
        "abstract unix socket": lambda: _ask(1, 1, "\0" + cfg["abstract"]),
        "d-bus address from the environment": lambda: _dbus(canary),
        "read /dev/shm": lambda: _read(cfg["shm_secret"], canary),
        "write /dev/shm": lambda: _write(cfg["shm_plant"], canary),
        "write a file outside the output": lambda: _write(cfg["outside_plant"], canary),
        "write into $HOME": lambda: _write(cfg["home_plant"], canary),
        "read ~/.aws/credentials": lambda: _read(cfg["aws"], canary),
        "read ~/.ssh": lambda: _read(cfg["ssh"], canary),
        "secret in the environment": lambda: any(canary in v for v in os.environ.values()),
        "read another process's environment": lambda: _parent_environ(canary),
        "sysv shared memory": lambda: _sysv(cfg["sysv_key"]),
        "ptrace / core dump (dumpable)": _dumpable,
    }
    for name, path in cfg["unix"].items():
        tries[f"unix socket in {name}"] = lambda path=path: _ask(1, 1, path)
    out = {}
    for name, attempt in tries.items():
        try:
            out[name] = bool(attempt())
        except Exception:  # noqa: BLE001 - every failure is a closed route
            out[name] = False
    return out


class _Trigger:
    """A meta-path finder that fires the probe once, when ``transformers`` is first imported."""

    def find_spec(self, name, path=None, target=None):
        global _fired
        if name == "transformers" and not _fired:
            _fired = True
            report = {
                "pid": os.getpid(),
                "netns": os.readlink("/proc/self/ns/net"),
                "routes": routes(json.loads(_CONFIG.read_text())),
            }
            os.write(2, b"TWOSTAGE-PROBE " + json.dumps(report).encode() + b"\n")
        return None


def arm() -> None:
    if _CONFIG.is_file():
        sys.meta_path.insert(0, _Trigger())
