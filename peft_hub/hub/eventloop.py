"""The event loop the hub serves on: uvloop, taking in every waiting connection at once.

libuv accepts one connection each time its loop polls a listening socket
(libuv/libuv#3696, 2022; the libuv uvloop bundles does so). The hub
answers a warm read on the event loop itself (:mod:`peft_hub.hub.hot`), so
under load one turn of the loop runs every request that is ready, several
milliseconds' worth, and a burst of k new connections waits k such turns
before the last is read: at 32 connections, 100-150 ms for the last ones,
in a run whose median request takes 9.

:class:`EagerLoop` listens itself, as asyncio's own loop does
(bpo-27906): each time the socket is readable it accepts every connection
waiting, up to the backlog, and hands each to uvloop with
``connect_accepted_socket``. Everything after the accept is uvloop's.
Servers with TLS or options uvicorn does not pass stay on uvloop's own
listener.

With several workers on one socket, each worker's loop is woken when a
connection waits; an idle one is in its poll and takes it first, as before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvloop

log = logging.getLogger(__name__)

#: How long the listener rests after running out of file descriptors or memory, as asyncio's does.
RETRY_DELAY = 1.0
#: The accept errors that the machine, not the connection, is out of something for.
_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class EagerServer(asyncio.AbstractServer):
    """Listens on ``sock`` from the loop's reader callbacks; what uvicorn needs of a server."""

    def __init__(self, loop: EagerLoop, protocol_factory: Callable[[], asyncio.BaseProtocol],
                 sock: socket.socket, backlog: int) -> None:
        self._loop, self._factory, self._sock, self._backlog = loop, protocol_factory, sock, max(1, backlog)
        self._serving = False
        sock.setblocking(False)
        sock.listen(self._backlog)
        self._start()

    def _start(self) -> None:
        if self._sock.fileno() >= 0 and not self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._serving = True

    def _accept(self) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left waiting
            except OSError as exc:
                if exc.errno not in _RESOURCES:
                    raise  # the loop logs it and goes on
                log.error("accepting a connection: %s; trying again in %g s", exc, RETRY_DELAY)
                self._stop()
                self._loop.call_later(RETRY_DELAY, self._start)
                return
            conn.setblocking(False)
            self._loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:  # the peer left before its transport was made
            log.debug("dropping an accepted connection: %s", exc)
            conn.close()

    def _stop(self) -> None:
        if self._serving:
            self._loop.remove_reader(self._sock.fileno())
            self._serving = False

    # --- asyncio.AbstractServer -------------------------------------------------

    def close(self) -> None:
        """Stop accepting and close the listening socket; open connections are uvicorn's to close."""
        if self._sock.fileno() >= 0:
            self._stop()
            self._sock.close()

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start()

    async def serve_forever(self) -> None:
        self._start()
        while self._sock.fileno() >= 0:
            await asyncio.sleep(RETRY_DELAY)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock.fileno() >= 0 else ()


class EagerLoop(uvloop.Loop):
    """uvloop whose TCP servers accept every waiting connection each turn (:class:`EagerServer`)."""

    async def create_server(  # type: ignore[override]  # asyncio's overloads, one signature here
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any = None,
            port: Any = None, *, sock: socket.socket | None = None, ssl: Any = None, backlog: int = 100,
            **options: Any) -> asyncio.AbstractServer:
        if ssl is not None or any(value is not None for value in options.values()):
            return await super().create_server(protocol_factory, host, port, sock=sock, ssl=ssl, backlog=backlog,
                                               **options)
        if sock is None:
            if not isinstance(host, str) or port is None:  # all interfaces, or several hosts: uvloop binds them
                return await super().create_server(protocol_factory, host, port, backlog=backlog, **options)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family, backlog=backlog)
        elif sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return await super().create_server(protocol_factory, sock=sock, backlog=backlog, **options)
        return EagerServer(self, protocol_factory, sock, backlog)
