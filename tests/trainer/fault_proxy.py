"""A fault-injecting TCP proxy on 127.0.0.1 in front of an HTTP server (moto's S3 server).

Per connection it either forwards bytes both ways, answers the first request with an HTTP 503
(``error_rate``), or resets the connection (``reset_rate``). :meth:`outage` makes it refuse all
traffic — new connections are reset at once and open ones are cut — until :meth:`restore`.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client sees "connection reset by peer"."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


class FaultProxy:
    def __init__(
        self, upstream: tuple[str, int], *, error_rate: float = 0.0, reset_rate: float = 0.0
    ) -> None:
        self.upstream = upstream
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self._rng = random.Random(1234)
        self._down = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.refused = 0  # connections refused or cut by an outage
        self.outage_seconds = 0.0
        self._down_since: float | None = None
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._srv.close()
        self._cut_all()

    def outage(self) -> None:
        """Every connection fails from now on, open ones included."""
        self._down_since = time.monotonic()
        self._down.set()
        self._cut_all()

    def restore(self) -> None:
        if self._down_since is not None:
            self.outage_seconds += time.monotonic() - self._down_since
        self._down_since = None
        self._down.clear()

    def _cut_all(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            self.refused += 1
            _reset(conn)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._down.is_set():
            self.refused += 1
            _reset(client)
            return
        roll = self._rng.random()
        if roll < self.reset_rate:
            _reset(client)
            return
        if roll < self.reset_rate + self.error_rate:
            try:
                client.recv(65536)
                body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                client.sendall(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data or self._down.is_set():
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with self._lock:
                        self._open.discard(s)
                    try:
                        s.close()
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)
