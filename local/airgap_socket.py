"""The guard's teeth: which destinations are this machine, and ``socket`` functions that refuse the rest.

:func:`install` swaps the replacements below into the ``socket`` module (and ``socket.socket``);
:func:`uninstall` puts the originals back. Each replacement checks its destination *before* the
original runs, so a refused attempt raises at once and no packet leaves, and nothing ever waits on
a network time-out. Host names are never resolved: local names are pinned to loopback here, any
other name is a DNS lookup and refused. When and for how long they are installed is
:func:`local.airgap.airgapped`'s business; the record of what was refused is
:mod:`local.airgap_record`'s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Any

from local.airgap_record import record, state

_LOCAL_NAMES = {"localhost", "localhost.", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


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
    return all(state.guards)


def _dest(host: Any, port: Any) -> str:
    host = _strip(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# The patched functions


def _original(name: str, default: Any = None, owner: Any = socket) -> Any:
    return state.originals.get((owner, name), default or getattr(owner, name))


def _check_address(sock: socket.socket, address: Any, what: str) -> Any:
    """Return the address to use (local names pinned to loopback) or raise AirgapViolation."""
    family = sock.family
    if family in (socket.AF_UNIX, getattr(socket, "AF_NETLINK", -1)):
        return address
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        raise record(what, f"{address!r} (address family {family!r})")
    host, port = address[0], address[1]
    addr = _ip(_strip(host))
    if addr is None and not is_local_name(host):
        raise record(what, _dest(host, port), " (a host name: needs DNS)")
    if not (addr.is_loopback if addr is not None else True) or not _loopback_allowed():
        raise record(what, _dest(host, port))
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
    raise record("DNS lookup of", _dest(host, port))


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    host, port = address[0], address[1]
    if not is_loopback(host) or not _loopback_allowed():
        note = "" if is_ip_literal(host) else " (a host name: needs DNS)"
        raise record("connect to", _dest(host, port), note)
    return _original("create_connection")(address, *args, **kwargs)


def _gethostbyname(name: Any) -> str:
    if is_ip_literal(name):
        return _original("gethostbyname")(name)
    if is_local_name(name):
        return "127.0.0.1"
    raise record("DNS lookup of", _strip(name))


def _gethostbyname_ex(name: Any) -> tuple[str, list[str], list[str]]:
    if is_ip_literal(name):
        return _original("gethostbyname_ex")(name)
    if is_local_name(name):
        return (_strip(name), [], ["127.0.0.1"])
    raise record("DNS lookup of", _strip(name))


def _gethostbyaddr(ip: Any) -> tuple[str, list[str], list[str]]:
    if is_local_name(ip):
        return (_strip(ip), [], ["127.0.0.1"])
    if is_loopback(ip):
        return ("localhost", [], [_strip(ip)])
    raise record("reverse DNS lookup of", _strip(ip))


def _getnameinfo(sockaddr: Any, flags: int) -> tuple[str, str]:
    orig = _original("getnameinfo")
    if flags & socket.NI_NUMERICHOST:
        return orig(sockaddr, flags)
    if is_loopback(sockaddr[0]):
        return ("localhost", orig(sockaddr, flags | socket.NI_NUMERICHOST)[1])
    raise record("reverse DNS lookup of", _dest(sockaddr[0], sockaddr[1]))


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


def install() -> None:
    """Swap every replacement in, keeping the originals (call with ``state.lock`` held)."""
    for owner, name, replacement in _PATCHES:
        if hasattr(owner, name):
            state.originals[(owner, name)] = getattr(owner, name)
            setattr(owner, name, replacement)


def uninstall() -> None:
    """Put every original back (call with ``state.lock`` held)."""
    for (owner, name), original in state.originals.items():
        setattr(owner, name, original)
    state.originals.clear()
