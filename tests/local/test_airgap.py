"""The air gap: blocked at once (no time-out waits), named, unswallowable; loopback still works."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import airgap
from local.airgap import AirgapViolation, airgapped

PUBLIC_IP = "203.0.113.7"  # TEST-NET-3: never routed, so a broken guard shows up as a time-out
FAST = 0.5  # seconds; a blocked attempt must fail far sooner than any network time-out


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(self.request.recv(1024))

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def http_server() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from loopback")

        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _blocked(fn, *args, **kwargs) -> AirgapViolation:
    start = time.monotonic()
    with pytest.raises(AirgapViolation) as info:
        fn(*args, **kwargs)
    assert time.monotonic() - start < FAST
    return info.value


def test_connect_to_a_public_address_fails_at_once_naming_destination_and_caller() -> None:
    with pytest.raises(AirgapViolation), airgapped():
        sock = socket.socket()
        sock.settimeout(5)
        err = _blocked(sock.connect, (PUBLIC_IP, 443))
        sock.close()
        assert f"{PUBLIC_IP}:443" in str(err) and err.destination == f"{PUBLIC_IP}:443"
        assert "test_connect_to_a_public_address" in str(err)
        assert f"{Path(__file__).name}:" in str(err)
        with pytest.raises(AirgapViolation):
            sock2 = socket.socket(socket.AF_INET6)
            sock2.connect_ex(("2001:db8::1", 80))
        _blocked(socket.create_connection, (PUBLIC_IP, 80), timeout=5)


def test_dns_lookups_fail_at_once() -> None:
    with pytest.raises(AirgapViolation), airgapped():
        err = _blocked(socket.getaddrinfo, "huggingface.co", 443)
        assert "DNS lookup of huggingface.co:443" in str(err)
        _blocked(socket.gethostbyname, "example.com")
        _blocked(socket.gethostbyname_ex, "example.com")
        _blocked(socket.gethostbyaddr, "8.8.8.8")
        _blocked(socket.getnameinfo, ("8.8.8.8", 53), 0)
        _blocked(socket.create_connection, ("pypi.org", 443), timeout=5)
        with socket.socket() as s:
            _blocked(s.connect, ("example.com", 80))  # connect() would resolve the name itself
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            _blocked(udp.sendto, b"dns query", (PUBLIC_IP, 53))


def test_violation_is_not_an_os_error_and_escapes_network_error_handlers() -> None:
    assert not issubclass(AirgapViolation, OSError)
    with pytest.raises(AirgapViolation), airgapped():
        with pytest.raises(AirgapViolation):
            try:
                socket.create_connection((PUBLIC_IP, 443), timeout=5)
            except OSError:  # what most client code catches; must not hide the violation
                pytest.fail("AirgapViolation was caught as an OSError")
        with pytest.raises(AirgapViolation):
            urllib.request.urlopen(
                "http://example.com/", timeout=5
            )  # urllib wraps OSError in URLError
        import requests

        with pytest.raises(AirgapViolation):
            requests.get("https://huggingface.co/api/models", timeout=5)


def test_a_swallowed_violation_still_aborts_when_the_guard_exits() -> None:
    with pytest.raises(AirgapViolation, match="caught the error; the run stops anyway") as info:
        with airgapped():
            try:
                socket.getaddrinfo("huggingface.co", 443)
            except Exception:  # noqa: BLE001 - what over-broad library code does
                pass
    assert info.value.destination == "huggingface.co:443"


def test_a_violation_in_another_thread_aborts_the_run() -> None:
    def worker() -> None:
        try:
            socket.create_connection((PUBLIC_IP, 443), timeout=5)
        except Exception:  # noqa: BLE001 - a telemetry thread that ignores failures
            pass

    with pytest.raises(AirgapViolation, match=PUBLIC_IP), airgapped():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()


def test_a_violation_re_raised_as_another_error_surfaces_as_the_violation() -> None:
    with pytest.raises(AirgapViolation, match="surfaced as RuntimeError") as info, airgapped():
        try:
            socket.getaddrinfo("example.com", 80)
        except AirgapViolation as err:
            raise RuntimeError("could not fetch the model") from err
    assert isinstance(info.value.__cause__, RuntimeError)


def test_loopback_and_unix_sockets_still_work(echo_server: int, http_server: int, tmp_path) -> None:
    with airgapped():
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, echo_server), timeout=5) as conn:
                conn.sendall(b"ping")
                assert conn.recv(16) == b"ping"
        with urllib.request.urlopen(f"http://localhost:{http_server}/", timeout=5) as resp:
            assert resp.read() == b"hello from loopback"
        assert socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4] == ("127.0.0.1", 80)
        assert socket.getfqdn() == socket.gethostname()  # answered locally, never by DNS
        a, b = socket.socketpair()
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        a.close()
        b.close()
    assert airgap.violations() == []


def test_asyncio_lookups_and_loopback(echo_server: int) -> None:
    async def main() -> bytes:
        with pytest.raises(AirgapViolation):
            await asyncio.open_connection("example.com", 80)
        reader, writer = await asyncio.open_connection("127.0.0.1", echo_server)
        writer.write(b"async")
        data = await reader.read(16)
        writer.close()
        return data

    with pytest.raises(AirgapViolation), airgapped():
        assert asyncio.run(main()) == b"async"


def test_loopback_can_be_blocked_too(echo_server: int) -> None:
    with pytest.raises(AirgapViolation), airgapped(allow_loopback=False):
        _blocked(socket.create_connection, ("127.0.0.1", echo_server), timeout=5)


def test_guard_is_removed_on_exit_and_nests() -> None:
    original = socket.getaddrinfo, socket.socket.connect
    with airgapped():
        assert airgap.active()
        with airgapped():
            assert socket.getaddrinfo is not original[0]
        assert airgap.active() and socket.getaddrinfo is not original[0]
    assert not airgap.active()
    assert (socket.getaddrinfo, socket.socket.connect) == original
    with pytest.raises(ValueError), airgapped():
        raise ValueError("an unrelated error leaves the guard too")
    assert socket.getaddrinfo is original[0]


def test_enable_offline_env_sets_the_switches(monkeypatch) -> None:
    for name in airgap.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    airgap.enable_offline_env()
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
    ):
        assert os.environ[name] == "1"
    assert os.environ["DO_NOT_TRACK"] == "1" and os.environ["WANDB_MODE"] == "disabled"


def test_hub_download_is_blocked_at_once_even_when_hub_is_online_and_imported_first(
    tmp_path,
) -> None:
    """Real HF code: with offline mode OFF, the guard alone stops the download, fast and named."""
    code = f"""
import time, huggingface_hub, huggingface_hub.constants
from local.airgap import AirgapViolation, airgapped
assert not huggingface_hub.constants.HF_HUB_OFFLINE
start = time.monotonic()
try:
    with airgapped():
        huggingface_hub.hf_hub_download("gpt2", "config.json", cache_dir={str(tmp_path)!r})
except AirgapViolation as err:
    print("BLOCKED", round(time.monotonic() - start, 3), err)
else:
    print("NOT BLOCKED")
from local.airgap import enable_offline_env
enable_offline_env()
print("OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
"""
    env = {k: v for k, v in os.environ.items() if k not in airgap.OFFLINE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("BLOCKED"), done.stdout
    assert float(first.split()[1]) < 2.0
    assert "huggingface.co:443" in first and "huggingface_hub" in first
    assert "OFFLINE True" in done.stdout
