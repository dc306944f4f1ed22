"""Hostile inputs the earlier suites did not send: Range headers with many,
overlapping, reversed or overflowing ranges on both file routes, and sign-in
``next`` targets that a browser would turn into another origin."""

from __future__ import annotations

import html
import re
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from raw_adapters import tiny_lora_dir

from peft_hub.client import HubClient

pytestmark = pytest.mark.integration

ROUTES = ["/admin/ranged/resolve/main/adapter_model.safetensors",
          "/api/adapters/admin/ranged/resolve/main/adapter_model.safetensors"]


@pytest.fixture
def ranged(embedded_hub, tmp_path):
    """A pushed adapter on local storage (the hub serves the bytes itself) and its weights' bytes."""
    src = tiny_lora_dir(tmp_path / "ranged", "ranged")
    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        client.push(src, name="admin/ranged")
    return (src / "adapter_model.safetensors").read_bytes()


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """A multipart/byteranges body as (Content-Range, bytes) pairs."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    return [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]


@pytest.mark.parametrize("route", ROUTES)
def test_hostile_ranges_get_the_right_bytes_and_never_more_than_the_file(embedded_hub, ranged, route):
    size, url = len(ranged), embedded_hub.url + route
    auth = {"Authorization": f"Bearer {embedded_hub.admin_token}"}

    def get(value: str) -> httpx.Response:
        return httpx.get(url, headers={**auth, "Range": value}, timeout=30)

    two = get("bytes=0-1,3-4")
    assert two.status_code == 206 and two.headers["content-type"].startswith("multipart/byteranges")
    assert _parts(two) == [(f"bytes 0-1/{size}", ranged[0:2]), (f"bytes 3-4/{size}", ranged[3:5])]
    for value in ("bytes=0-99999999999999999999999", "bytes=-99999999999999999999", "bytes=0-"):
        whole = get(value)
        assert (whole.status_code, whole.headers["content-range"], whole.content) == (
            206, f"bytes 0-{size - 1}/{size}", ranged), value
    beyond = get("bytes=99999999999999999999-")
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    for value in ("bytes=5-2", "bytes=abc", "items=0-1"):
        assert get(value).status_code in (400, 416), value
    # Overlapping and repeated ranges are merged: no answer is larger than the file, whatever is asked.
    for value in ("bytes=" + ",".join(["0-"] * 200), "bytes=" + ",".join(["0-100", "50-200", "150-"] * 50),
                  "bytes=" + ",".join(f"{i}-{i}" for i in range(0, size, 2)), "bytes=" + ",".join(["-1"] * 300)):
        r = get(value)
        assert r.status_code in (200, 206, 416), (value[:40], r.status_code)
        assert len(r.content) <= size + 512, (value[:40], len(r.content))


#: ``next`` targets that must not send a signed-in browser off the hub. A
#: browser strips tabs and newlines from a URL and reads ``\\`` as ``/``.
HOSTILE_NEXT = ["//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example",
                "/\n/evil.example", "\t//evil.example", "/%2F/evil.example", "/%5Cevil.example", "\\\\evil.example",
                "/.//evil.example", " //evil.example", "javascript:alert(1)", "/\r\n/evil.example"]


def _browser_target(base: str, location: str) -> str:
    """Where a browser goes for ``Location: location`` (WHATWG URL parsing, in the parts that matter here)."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip().replace("\\", "/")
    return urljoin(base + "/login", cleaned)


def test_sign_in_never_redirects_a_browser_off_the_hub(embedded_hub):
    hub_origin = tuple(urlsplit(embedded_hub.url)[:2])

    def on_hub(location: str) -> bool:
        return tuple(urlsplit(_browser_target(embedded_hub.url, location))[:2]) == hub_origin

    with httpx.Client(base_url=embedded_hub.url, timeout=30) as browser:
        for target in HOSTILE_NEXT:
            form = browser.get("/login", params={"next": target})
            assert form.status_code in (200, 422), (target, form.status_code)  # 422: a control character
            if form.status_code == 200:  # the form carries the target on: it must be a path here
                kept = re.search(r'name="next" value="([^"]*)"', form.text)
                assert kept is None or on_hub(html.unescape(kept.group(1))), (target, kept.group(1))
            else:
                form = browser.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            r = browser.post("/login", data={"token": embedded_hub.admin_token, "csrf": csrf, "next": target})
            assert r.status_code == 303, (target, r.status_code, r.text[:200])
            assert on_hub(r.headers["location"]), (target, r.headers["location"])


def test_an_hf_commit_of_endless_deletions_is_refused_while_it_streams(embedded_hub, tmp_path):
    """A commit can delete at most the files its parent holds, so one that
    keeps naming deletions long past any adapter's or model's file count can
    never succeed; the hub must answer it while the body is still arriving
    instead of reading (and keeping) up to ``limits.HF_COMMIT_CAP`` of it."""
    import select
    import socket

    with HubClient(embedded_hub.url, embedded_hub.admin_token, cache_dir=tmp_path / "c") as client:
        client.push(tiny_lora_dir(tmp_path / "src", "deletions"), name="admin/deletions")
    host, port = urlsplit(embedded_hub.url).hostname, urlsplit(embedded_hub.url).port
    lines = b'{"key":"header","value":{"summary":"x"}}\n'
    chunk = b'{"key":"deletedFile","value":{"path":"README.md"}}\n' * 2000  # 100 KB, 2,000 operations
    budget, sent, answer = 8 * 1024 * 1024, 0, b""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /api/models/admin/deletions/commit/main HTTP/1.1\r\nHost: hub\r\n"
                     b"Authorization: Bearer " + embedded_hub.admin_token.encode() + b"\r\n"
                     b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(lines):x}\r\n".encode() + lines + b"\r\n")
        while sent < budget and not answer:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:  # the hub answered and closed
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                answer = sock.recv(4096)
        if not answer:
            ready = select.select([sock], [], [], 3)[0]  # the body has not ended: a hub still reading says nothing
            answer = sock.recv(4096) if ready else b""
    assert answer.startswith(b"HTTP/1.1 4"), f"no answer after {sent} bytes ({sent // 51} deletions)"
    assert sent < budget
