"""The air gap: offline switches for the HF stack and an in-process network guard.

:func:`enable_offline_env` sets every offline/telemetry switch the Hugging Face stack (and the
usual experiment trackers) read; call it before they are imported. :func:`airgapped` patches
the ``socket`` module so that, while it is active, any connect/send to a non-loopback address
and any DNS lookup raises :class:`AirgapViolation` at once — before a packet leaves, so nothing
ever waits on a network time-out. The error names the destination and the code that tried.

:class:`AirgapViolation` is deliberately *not* an ``OSError``: ``except OSError`` /
``except socket.error`` / requests' ``ConnectionError`` handling does not catch it. Code that
catches *every* ``Exception`` still could, so each attempt is also recorded and logged, and
leaving :func:`airgapped` raises the first recorded violation if the block swallowed it:
a blocked attempt always aborts the run. See ``docs/airgap.md``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

#: Environment switches set by :func:`enable_offline_env` (values as the libraries expect them).
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "COMET_MODE": "disabled",
    "MLFLOW_TRACKING_URI": "",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "BITSANDBYTES_NOWELCOME": "1",
}

_LOCAL_NAMES = {"localhost", "localhost.", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
# Frames in these files are the plumbing of a connection, not the code that asked for it.
_PLUMBING_PREFIXES = tuple(
    "socket ssl selectors asyncio concurrent threading http.client urllib urllib3 requests httpx "
    "httpx2 httpcore httpcore2 h11 h2 anyio aiohttp botocore boto3 s3transfer dns local.airgap".split()
)


class AirgapViolation(Exception):  # noqa: N818 - the name is the public contract
    """A network attempt inside :func:`airgapped`; deliberately not an ``OSError`` subclass."""

    def __init__(self, message: str, *, destination: str = "", caller: str = "") -> None:
        super().__init__(message)
        self.destination = destination
        self.caller = caller


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.guards: list[bool] = []  # allow_loopback of each active airgapped() block
        self.originals: dict[tuple[Any, str], Any] = {}
        self.violations: list[AirgapViolation] = []


_state = _State()


def active() -> bool:
    """True while an :func:`airgapped` block is active (in any thread)."""
    return bool(_state.guards)


def violations() -> list[AirgapViolation]:
    """Every attempt blocked since the outermost active guard went up (a copy)."""
    with _state.lock:
        return list(_state.violations)


def enable_offline_env() -> dict[str, str]:
    """Set every offline and telemetry switch; returns what it set.

    Call it before importing transformers / huggingface_hub / peft: they read most switches at
    import time. If huggingface_hub is already imported its constants are flipped as well.
    """
    os.environ.update(OFFLINE_ENV)
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_UPDATE_CHECK"):
            if hasattr(hub_constants, name):
                setattr(hub_constants, name, True)
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None and hasattr(datasets_config, "HF_DATASETS_OFFLINE"):
        datasets_config.HF_DATASETS_OFFLINE = True
    return dict(OFFLINE_ENV)


# ---------------------------------------------------------------------------------------------
# Classifying destinations (pure functions)


def _strip(host: Any) -> str:
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("ascii", "replace")
    return str(host).strip("[]").split("%", 1)[0]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_local_name(host: Any) -> bool:
    """A name answered without DNS: localhost, ``*.localhost`` and this machine's own name."""
    name = _strip(host).lower()
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    return name == _original("gethostname", socket.gethostname)().lower()


def is_loopback(host: Any) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1) or a local name."""
    addr = _ip(_strip(host))
    return addr.is_loopback if addr is not None else is_local_name(host)


def is_ip_literal(host: Any) -> bool:
    return _ip(_strip(host)) is not None


def _loopback_allowed() -> bool:
    return all(_state.guards)


# ---------------------------------------------------------------------------------------------
# Naming the caller and recording the attempt


def _frame_label(frame: Any) -> str:
    module = frame.f_globals.get("__name__", "?")
    func = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    return f"{module}.{func} ({frame.f_code.co_filename}:{frame.f_lineno})"


def _is_plumbing(frame: Any) -> bool:
    module = frame.f_globals.get("__name__", "")
    return any(module == p or module.startswith(p + ".") for p in _PLUMBING_PREFIXES)


def _caller() -> str:
    """The first frame outside socket/ssl/this module, and the first outside network libraries."""
    frame = sys._getframe(2)
    first = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if first is None and module not in ("socket", "ssl", "local.airgap"):
            first = frame
        if first is not None and not _is_plumbing(frame):
            label = _frame_label(frame)
            return label if frame is first else f"{_frame_label(first)}, called from {label}"
        frame = frame.f_back
    return _frame_label(first) if first is not None else "?"


def _violation(what: str, destination: str, note: str = "") -> AirgapViolation:
    caller = _caller()
    err = AirgapViolation(
        f"air gap: blocked {what} {destination}{note} by {caller}; the network is off for this run "
        "(do anything that needs it before the air gap goes up)",
        destination=destination,
        caller=caller,
    )
    with _state.lock:
        _state.violations.append(err)
    logger.error("%s", err)
    return err


def _dest(host: Any, port: Any) -> str:
    host = _strip(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# The patched functions


def _original(name: str, default: Any = None, owner: Any = socket) -> Any:
    return _state.originals.get((owner, name), default or getattr(owner, name))


def _check_address(sock: socket.socket, address: Any, what: str) -> Any:
    """Return the address to use (local names pinned to loopback) or raise AirgapViolation."""
    family = sock.family
    if family in (socket.AF_UNIX, getattr(socket, "AF_NETLINK", -1)):
        return address
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        raise _violation(what, f"{address!r} (address family {family!r})")
    host, port = address[0], address[1]
    addr = _ip(_strip(host))
    if addr is None and not is_local_name(host):
        raise _violation(what, _dest(host, port), " (a host name: needs DNS)")
    if not (addr.is_loopback if addr is not None else True) or not _loopback_allowed():
        raise _violation(what, _dest(host, port))
    if addr is None:  # a local name: pin it to loopback instead of letting the resolver see it
        loop = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        return (loop, *address[1:])
    return address


def _connect(self: socket.socket, address: Any) -> None:
    return _original("connect", owner=socket.socket)(
        self, _check_address(self, address, "connect to")
    )


def _connect_ex(self: socket.socket, address: Any) -> int:
    return _original("connect_ex", owner=socket.socket)(
        self, _check_address(self, address, "connect to")
    )


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    if args:
        args = (*args[:-1], _check_address(self, args[-1], "send to"))
    return _original("sendto", owner=socket.socket)(self, data, *args)


def _sendmsg(self: socket.socket, buffers: Any, *args: Any) -> int:
    if len(args) >= 3 and args[2] is not None:
        args = (*args[:2], _check_address(self, args[2], "send to"), *args[3:])
    return _original("sendmsg", owner=socket.socket)(self, buffers, *args)


def _getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
):  # noqa: A002
    orig = _original("getaddrinfo")
    if host is None or _strip(host) == "" or is_ip_literal(host):
        return orig(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    if is_local_name(host):
        out: list[Any] = []
        for fam, lit in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            if family in (0, fam):
                with contextlib.suppress(OSError):
                    out += orig(lit, port, fam, type, proto, flags | socket.AI_NUMERICHOST)
        if out:
            return out
    raise _violation("DNS lookup of", _dest(host, port))


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    host, port = address[0], address[1]
    if not is_loopback(host) or not _loopback_allowed():
        note = "" if is_ip_literal(host) else " (a host name: needs DNS)"
        raise _violation("connect to", _dest(host, port), note)
    return _original("create_connection")(address, *args, **kwargs)


def _gethostbyname(name: Any) -> str:
    if is_ip_literal(name):
        return _original("gethostbyname")(name)
    if is_local_name(name):
        return "127.0.0.1"
    raise _violation("DNS lookup of", _strip(name))


def _gethostbyname_ex(name: Any) -> tuple[str, list[str], list[str]]:
    if is_ip_literal(name):
        return _original("gethostbyname_ex")(name)
    if is_local_name(name):
        return (_strip(name), [], ["127.0.0.1"])
    raise _violation("DNS lookup of", _strip(name))


def _gethostbyaddr(ip: Any) -> tuple[str, list[str], list[str]]:
    if is_local_name(ip):
        return (_strip(ip), [], ["127.0.0.1"])
    if is_loopback(ip):
        return ("localhost", [], [_strip(ip)])
    raise _violation("reverse DNS lookup of", _strip(ip))


def _getnameinfo(sockaddr: Any, flags: int) -> tuple[str, str]:
    orig = _original("getnameinfo")
    if flags & socket.NI_NUMERICHOST:
        return orig(sockaddr, flags)
    if is_loopback(sockaddr[0]):
        return ("localhost", orig(sockaddr, flags | socket.NI_NUMERICHOST)[1])
    raise _violation("reverse DNS lookup of", _dest(sockaddr[0], sockaddr[1]))


_PATCHES: list[tuple[Any, str, Any]] = [
    (socket.socket, "connect", _connect),
    (socket.socket, "connect_ex", _connect_ex),
    (socket.socket, "sendto", _sendto),
    (socket.socket, "sendmsg", _sendmsg),
    (socket, "getaddrinfo", _getaddrinfo),
    (socket, "create_connection", _create_connection),
    (socket, "gethostbyname", _gethostbyname),
    (socket, "gethostbyname_ex", _gethostbyname_ex),
    (socket, "gethostbyaddr", _gethostbyaddr),
    (socket, "getnameinfo", _getnameinfo),
]


def _install() -> None:
    for owner, name, replacement in _PATCHES:
        if hasattr(owner, name):
            _state.originals[(owner, name)] = getattr(owner, name)
            setattr(owner, name, replacement)


def _uninstall() -> None:
    for (owner, name), original in _state.originals.items():
        setattr(owner, name, original)
    _state.originals.clear()


@contextlib.contextmanager
def airgapped(allow_loopback: bool = True) -> Iterator[None]:
    """Block every non-loopback connection and every DNS lookup in this process while active.

    Loopback (127.0.0.0/8, ::1, ``localhost`` answered without DNS) stays open unless
    ``allow_loopback`` is False; Unix sockets always do. Blocked attempts raise
    :class:`AirgapViolation`; if the block swallowed one, leaving it raises it again.
    Guards nest; the patches cover every thread while any guard is active.
    """
    with _state.lock:
        if not _state.guards:
            _state.violations.clear()
            _install()
        _state.guards.append(allow_loopback)
        seen = len(_state.violations)
    try:
        yield
    except Exception as err:
        new = violations()[seen:]
        if new and not isinstance(err, AirgapViolation):
            raise AirgapViolation(
                f"{new[0]} (it surfaced as {type(err).__name__})",
                destination=new[0].destination,
                caller=new[0].caller,
            ) from err
        raise
    else:
        new = violations()[seen:]
        if new:
            raise AirgapViolation(
                f"{new[0]} (the code that tried caught the error; the run stops anyway)",
                destination=new[0].destination,
                caller=new[0].caller,
            )
    finally:
        with _state.lock:
            _state.guards.pop()
            if not _state.guards:
                _uninstall()
