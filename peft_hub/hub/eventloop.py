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

Several workers on one socket are all woken when connections wait, and the
first to run would take them all, to keep them for their whole keep-alive
life: 32 of 32 in one worker of two here. Their loop, :class:`SharingLoop`,
takes at most :data:`SHARED_BATCH` a turn, so an idle worker gets its share
(plain uvloop split the same 32 as 30/2 to 19/13) and a busy one still
takes in a burst in a few turns.
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
#: The most connections a worker that shares its socket with others takes in each turn (:class:`SharingLoop`).
SHARED_BATCH = 4
#: The accept errors that the machine, not the connection, is out of something for.
_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class EagerServer(asyncio.AbstractServer):
    """Listens on ``sock`` from the loop's reader callbacks; what uvicorn needs of a server."""

    def __init__(self, loop: EagerLoop, protocol_factory: Callable[[], asyncio.BaseProtocol],
                 sock: socket.socket, backlog: int, batch: int | None = None) -> None:
        self._loop, self._factory, self._sock = loop, protocol_factory, sock
        self._batch = max(1, backlog if batch is None else min(batch, backlog))
        self._serving = False
        #: The connections being handed to uvloop: the loop keeps only weak references to tasks.
        self._handing: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        sock.listen(max(1, backlog))
        self._start()

    def _start(self) -> None:
        if self._sock.fileno() >= 0 and not self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._serving = True

    def _accept(self) -> None:
        for _ in range(self._batch):
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
            task = self._loop.create_task(self._connect(conn))
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)

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

    #: The most connections taken in per turn; None: up to the backlog.
    accept_batch: int | None = None

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
        return EagerServer(self, protocol_factory, sock, backlog, self.accept_batch)


class SharingLoop(EagerLoop):
    """:class:`EagerLoop` for one of several workers on one socket: :data:`SHARED_BATCH` connections a turn."""

    accept_batch = SHARED_BATCH
