"""A client that disconnects in the middle of its body: the write it was
sending is dropped whole, and the hub logs one line, not an "unexpected"
failure with a traceback under an incident id (that is for the hub's bugs)."""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration

HEADER = b'{"key":"header","value":{"summary":"cut"}}\n'
# An inline file whose base64 never ends: the hub is still reading when the client goes.
PARTIAL = b'{"key":"file","value":{"content":"' + b"QUFB" * 2_000_000


@pytest.mark.parametrize("route", ["hf commit", "blob upload"])
def test_a_body_cut_off_midway_changes_nothing_and_is_logged_as_the_clients(embedded_hub, tmp_path, caplog, route):
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        before = client.push(tiny_lora_dir(tmp_path / "src", "cut"), name="admin/cut").revision
    if route == "hf commit":
        head = (b"POST /api/models/admin/cut/commit/main HTTP/1.1\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n")
        body = f"{len(HEADER + PARTIAL):x}\r\n".encode() + HEADER + PARTIAL
    else:
        head = b"PUT /api/blobs/" + b"a" * 64 + b"?size=10000000 HTTP/1.1\r\nContent-Length: 10000000\r\n"
        body = b"x" * 4_000_000
    url = urlsplit(embedded_hub.url)
    caplog.set_level(logging.INFO, logger="peft_hub.hub")
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + b"Host: hub\r\nAuthorization: Bearer " + embedded_hub.admin_token.encode() + b"\r\n\r\n")
        sock.sendall(body)
        time.sleep(0.3)  # the hub is inside the body
    deadline = time.monotonic() + 15
    while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("peft_hub")]
    assert any("the client disconnected before its body ended" in m for m in messages), messages
    assert not any("unexpectedly" in m for m in messages), messages
    main = httpx.get(f"{embedded_hub.url}/api/adapters/admin/cut",
                     headers={"Authorization": f"Bearer {embedded_hub.admin_token}"}).json()
    assert main["revision"] == before
