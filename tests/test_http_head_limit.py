"""The hub's HTTP parser bounds a request's line and headers (``hub/protocol.py``):
httptools alone would buffer an endless header; h11 is given the same bound."""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import make_settings
from services import live_hub

from peft_hub.hub.protocol import HEAD_MAX


def _exchange(url: str, payload: bytes, *, until: int = 1, timeout: float = 10) -> bytes:
    """Send ``payload`` and read until ``until`` status lines came or the hub closed."""
    host, port = url.removeprefix("http://").split(":")
    seen = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the hub may close while we still send: what it answered is still readable
        deadline = time.monotonic() + timeout
        while seen.count(b"HTTP/1.1 ") < until and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.fixture(scope="module")
def hub(tmp_path_factory, request):
    with live_hub(make_settings("embedded", tmp_path_factory.mktemp("head"), request)) as running:
        yield running


def test_a_head_over_the_bound_gets_431_and_the_connection_closes(hub):
    huge = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (2 * HEAD_MAX) + b"\r\n\r\n"
    answer = _exchange(hub.url, huge)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()


def test_an_endless_header_is_cut_off(hub):
    """A head that never ends is refused once it passes the bound, not buffered
    forever: the hub closes the connection long before 64 MiB could be sent
    (socket buffers on loopback hold a few MiB at most)."""
    host, port = hub.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent, piece = 0, b"b" * 65536
        try:
            while sent < 64 * 2**20:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            pass
    assert sent < 32 * 2**20, f"the hub kept reading a {sent}-byte head"
    assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:200]


def test_many_headers_within_the_bound_are_answered(hub):
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(HEAD_MAX // 200))
    answer = _exchange(hub.url, b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_large_bodies_do_not_count_as_head_and_keep_alive_still_works(hub):
    """A body far over the bound, in the same write as its head and followed by
    a second request on the connection, is a body: both get answers."""
    body = b"{" + b" " * (4 * HEAD_MAX) + b"}"
    post = (b"POST /api/adapters/nobody/nothing/tags HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    get = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = _exchange(hub.url, post + get, until=2)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert len(statuses) == 2 and b"431" not in statuses, answer[:400]
    assert statuses[1] == b"200"
