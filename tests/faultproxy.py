"""A loopback TCP proxy that misbehaves on demand, for fault-injection tests.

Put it between the hub and a dependency (S3, PostgreSQL) and switch its mode
at any time::

    with FaultProxy("127.0.0.1", 8333) as proxy:   # proxy.url -> http://127.0.0.1:<port>
        proxy.set("stall")                          # accept, read, never answer

Modes:

- ``pass``: forward bytes both ways.
- ``stall``: accept connections and read what is sent, never answer.
- ``refuse``: accept, then reset the connection at once (a service that is down).
- ``cut``: read the request, then reset the connection (a crash mid-request).
- ``error``: answer every request with a raw HTTP error (``status``, default 503).

Switching modes resets every open connection, so pooled keep-alive
connections see the new mode on their next request too.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "stall", "refuse", "cut", "error"]
REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a crashed peer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    """A threaded TCP proxy on 127.0.0.1 in front of ``host:port``."""

    def __init__(self, host: str, port: int, mode: Mode = "pass") -> None:
        self.target = (host, port)
        self.mode: Mode = mode
        self.status = 503
        self.connections = 0  # accepted so far
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so the accept loop notices close()
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"faultproxy-{self.port}")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: Mode, *, status: int = 503) -> None:
        """Switch to ``mode`` and reset every open connection."""
        with self._lock:
            self.mode, self.status = mode, status
            doomed, self._open = self._open, set()
        for sock in doomed:
            _reset(sock)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.set(self.mode)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.mode), daemon=True).start()

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            self._open.update(socks)
            return True

    def _serve(self, client: socket.socket, mode: Mode) -> None:
        if mode == "refuse":
            _reset(client)
            return
        if not self._track(client):
            _reset(client)
            return
        try:
            if mode == "pass":
                self._pipe(client)
            elif mode == "stall":
                while client.recv(65536):
                    pass
            elif mode == "cut":
                self._read_head(client)
                _reset(client)
            else:
                self._answer_error(client)
        except (OSError, ValueError):  # reset by set() under our feet
            pass
        finally:
            with self._lock:
                self._open.discard(client)
            try:
                client.close()
            except OSError:
                pass

    @staticmethod
    def _read_head(client: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def _answer_error(self, client: socket.socket) -> None:
        while self._read_head(client):
            reason = REASONS.get(self.status, "Error")
            body = (f"<?xml version=\"1.0\"?><Error><Code>{reason.replace(' ', '')}</Code>"
                    f"<Message>injected by faultproxy</Message></Error>").encode()
            client.sendall(f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: application/xml\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            client.shutdown(socket.SHUT_WR)
            # Drain what the client still sends (a request body) so the close is clean.
            client.settimeout(2)
            while client.recv(65536):
                pass
            return

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=5)
        upstream.settimeout(None)
        if not self._track(upstream):
            _reset(upstream)
            return
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(client, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, client)
                while True:
                    for key, _ in sel.select(timeout=0.5):
                        data = key.fileobj.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    if self._closed.is_set():
                        return
        finally:
            with self._lock:
                self._open.discard(upstream)
            try:
                upstream.close()
            except OSError:
                pass
