"""The hub's event loop (``hub/eventloop.py``) takes in every waiting
connection each turn, however long its turns run, and serves like uvloop
otherwise: a listener it was handed or bound itself, closed on shutdown."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from services import free_port, serve_in_thread, wait_until

from peft_hub.hub.protocol import server_options

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop runs on POSIX only")

BURST = 24
#: How long each turn of the loop is kept busy: as the hub's are under load, when it answers reads on the loop.
TURN = 0.02


def busy_app() -> tuple[FastAPI, list[int], threading.Event]:
    """An app whose ``/busy`` keeps every later loop turn busy for :data:`TURN`, one turn at a time,
    and whose ``/ping`` notes how many busy turns had passed when it was read."""
    app, turns, pings, done = FastAPI(), [0], [], threading.Event()

    async def spin() -> None:
        while not done.is_set():
            time.sleep(TURN)  # holds the loop, as a turn of requests answered on it does
            turns[0] += 1
            await asyncio.sleep(0)  # the next part runs in the loop's next turn

    @app.get("/busy")
    async def busy() -> dict:
        app.state.spinner = asyncio.get_running_loop().create_task(spin())
        return {}

    @app.get("/ping")
    async def ping() -> dict:
        pings.append(turns[0])
        return {}

    return app, pings, done


def burst(url: str) -> None:
    """:data:`BURST` connections opened together, each sending one request, all answered."""
    host, port = url.removeprefix("http://").split(":")
    conns = [socket.create_connection((host, int(port)), timeout=30) for _ in range(BURST)]
    try:
        for conn in conns:
            conn.sendall(f"GET /ping HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        for conn in conns:
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for conn in conns:
            conn.close()


def burst_on_socket(workers: int = 1) -> tuple[list[int], socket.socket]:
    """:func:`burst` against :func:`busy_app` served by uvicorn on a socket it is handed, as ``peft-hub
    serve`` runs it (or each of ``workers`` sharing it), then shut down; the pings, and the socket."""
    import uvicorn

    app, pings, done = busy_app()
    sock = socket.create_server(("127.0.0.1", free_port()))
    config = uvicorn.Config(app, log_level="critical", lifespan="off", **server_options(workers))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "server")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        httpx.get(url + "/busy").raise_for_status()
        burst(url)
    finally:
        done.set()
        server.should_exit = True
        thread.join(10)
    return pings, sock


@pytest.mark.parametrize("listener", ["handed a socket", "host and port"])
def test_a_burst_of_connections_is_taken_in_within_a_few_turns_of_a_busy_loop(listener):
    """libuv accepts one connection per turn of its loop: with 20 ms turns, the last of 24 new
    connections would be read some 24 turns after the first. Here they all are within a few."""
    if listener == "host and port":
        app, pings, done = busy_app()
        try:
            with serve_in_thread(app, "busy app", **server_options()) as url:
                httpx.get(url + "/busy").raise_for_status()
                burst(url)
        finally:
            done.set()
    else:
        pings, sock = burst_on_socket()
        assert sock.fileno() == -1, "the listener is closed on shutdown"
    assert len(pings) == BURST
    assert max(pings) - min(pings) <= 6, f"busy turns between the first and the last request read: {pings}"


def test_a_worker_sharing_its_socket_takes_a_few_connections_a_turn():
    """One of several workers takes at most ``SHARED_BATCH`` connections a turn, so that the others
    get theirs; the burst is still read within a few turns, not one a turn."""
    from peft_hub.hub.eventloop import SHARED_BATCH

    pings, _ = burst_on_socket(workers=2)
    turns = max(pings) - min(pings)
    assert len(pings) == BURST
    assert BURST // SHARED_BATCH - 1 <= turns <= BURST // SHARED_BATCH + 6, pings


def test_the_eager_loop_is_uvloop_and_its_listener_goes_on_after_a_connection_that_left():
    """A connection reset before it is taken in costs nothing but itself."""
    import uvloop

    from peft_hub.hub.eventloop import EagerLoop

    assert issubclass(EagerLoop, uvloop.Loop)
    app, pings, done = busy_app()
    with serve_in_thread(app, "app", **server_options()) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(20):  # closed with a reset (linger 0) before the server reads them
            conn = socket.create_connection((host, int(port)))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        assert httpx.get(url + "/ping").status_code == 200
    assert pings == [0]


RESOURCE_LIMITED = r'''
import os, resource, socket, uvicorn
from fastapi import FastAPI
from peft_hub.hub.protocol import server_options

app = FastAPI()

@app.get("/ping")
async def ping() -> dict:
    return {}

sock = socket.create_server(("127.0.0.1", 0))
config = uvicorn.Config(app, log_level="critical", lifespan="off", **server_options())
config.load()
# The loop's own descriptors are made at its start: leave room for them, and for a few connections.
limit = len(os.listdir("/proc/self/fd")) + 24
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(config).run(sockets=[sock])
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_a_listener_out_of_file_descriptors_rests_and_then_serves_again():
    """Past the process's descriptor limit, accept fails with EMFILE: the listener says so, stops
    for a second (it would spin otherwise: the socket stays readable), and takes connections again
    once descriptors are free."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", RESOURCE_LIMITED], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/ping"
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 30, "limited server")
        held = []
        for _ in range(64):  # more than the limit leaves: the kernel completes them, the server cannot take them
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            held[-1].sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.5)
        for conn in held:
            conn.close()
        # Freed: within a few of the listener's rests, a new connection is answered.
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 30, "the server after EMFILE")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Too many open files" in err and "trying again in 1 s" in err, err[-2000:]
