"""The client when the network, the hub's store or the local cache fail.

A fault hub on loopback answers in the real hub's shapes, each answer picked
per request from a script: cut connections mid-body, 5xx storms that then
recover, 429 with Retry-After, stalls longer than the read timeout, servers
with and without Range support. Real hubs (SQLite + files, PostgreSQL +
SeaweedFS) lose or damage blobs in their stores, and a real ``peft-hub pull``
process is killed with SIGKILL mid-download and mid-assembly.

Every test asserts the exact exception class or outcome, and that nothing is
left behind: no ``.incomplete`` file, no staging directory, and an output
directory that is either complete or absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from raw_adapters import zero_safetensors
from services import free_port, wait_until

from peft_hub.cli import cli
from peft_hub.client import HubClient
from peft_hub.client.cache import BlobCache
from peft_hub.client.http import timeouts
from peft_hub.client.retry import PROGRESS_FACTOR, RetryPolicy, transient
from peft_hub.errors import (
    ChecksumMismatchError,
    EntryNotFoundError,
    HubUnreachableError,
    InvalidInputError,
    PeftHubError,
    PermissionDeniedError,
    RateLimitedError,
    StorageError,
)

TOKEN = "phub_reliability000000000000000000000000000000000000"
REV = "89abcdef0123456789abcdef0123456789abcdef"
LABEL = f"admin/support@{REV[:12]}"
CONFIG = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                     "base_model_name_or_path": "tiny"}).encode()
WEIGHTS = zero_safetensors({"base_model.model.layers.0.q_proj.lora_A.weight": [2, 32768],
                            "base_model.model.layers.0.q_proj.lora_B.weight": [32768, 2]})  # 512 KiB
FILES = {"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS}
FAST = RetryPolicy(attempts=4, max_wait=10, wait_initial=0.01, jitter=0.01)

Send = Callable[[dict[str, Any]], Awaitable[None]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """Short backoff for every client made here (also the CLI's); tests that
    time a wait set their own policy."""
    monkeypatch.setenv("PEFT_HUB_RETRY_WAIT", "0.01")
    monkeypatch.setenv("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")


# --- the fault hub -------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Behaviour = Callable[["FaultHub", Seen, Send], Awaitable[None]]


async def _start(send: Send, status: int, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})


async def _body(send: Send, data: bytes, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


def _span(seen: Seen, data: bytes, ranges: bool) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and bytes for a GET of ``data``, honouring ``Range: bytes=N-`` if ``ranges``."""
    asked = seen.headers.get("range", "")
    if ranges and asked.startswith("bytes=") and asked.endswith("-"):
        start = int(asked[6:-1])
        part = data[start:]
        span = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return 206, {"content-length": str(len(part)), "content-range": span}, part
    return 200, {"content-length": str(len(data)), "accept-ranges": "bytes" if ranges else "none"}, data


def ok(*, ranges: bool = True) -> Behaviour:
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        status, headers, data = _span(seen, hub.file_for(seen), ranges)
        hub.bytes_sent += len(data)
        await _start(send, status, headers)
        await _body(send, data)
    return run


def cut(after: int, *, ranges: bool = True) -> Behaviour:
    """Announce the whole (remaining) file, send ``after`` bytes of it, drop the connection."""
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        status, headers, data = _span(seen, hub.file_for(seen), ranges)
        hub.bytes_sent += min(after, len(data))
        await _start(send, status, headers)
        await _body(send, data[:after], more=True)
        raise ConnectionResetError("dropped on purpose")
    return run


def stall(after: int, seconds: float, *, ranges: bool = True) -> Behaviour:
    """Send ``after`` bytes, go silent for ``seconds``, then send the rest."""
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        status, headers, data = _span(seen, hub.file_for(seen), ranges)
        await _start(send, status, headers)
        await _body(send, data[:after], more=True)
        await asyncio.sleep(seconds)
        await _body(send, data[after:])
    return run


def trickle(chunk: int, delay: float) -> Behaviour:
    """The whole file, slowly: ``chunk`` bytes every ``delay`` seconds."""
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        status, headers, data = _span(seen, hub.file_for(seen), True)
        await _start(send, status, headers)
        for i in range(0, len(data), chunk):
            await _body(send, data[i:i + chunk], more=True)
            await asyncio.sleep(delay)
        await _body(send, b"")
    return run


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Behaviour:
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body if body is not None else {"error": "x"}).encode()
        await _start(send, code, {"content-length": str(len(raw)), **(headers or {})})
        await _body(send, raw)
    return run


def answer(value: Any, code: int = 200) -> Behaviour:
    return status(code, value, {"content-type": "application/json"})


def redirect(location: str) -> Behaviour:
    return status(302, b"", {"location": location})


def cut_json(value: Any) -> Behaviour:
    """Start a JSON answer and drop the connection halfway through it."""
    async def run(hub: FaultHub, seen: Seen, send: Send) -> None:
        raw = json.dumps(value).encode()
        await _start(send, 200, {"content-length": str(len(raw)), "content-type": "application/json"})
        await _body(send, raw[: len(raw) // 2], more=True)
        raise ConnectionResetError("dropped on purpose")
    return run


def _detail(files: dict[str, bytes]) -> dict[str, Any]:
    return {"id": "admin/support", "owner": "admin", "name": "support", "revision": REV, "tags": {"main": REV},
            "meta": {}, "files": [{"path": n, "sha256": sha(d), "size": len(d)} for n, d in files.items()]}


@dataclass
class FaultHub:
    """One loopback server; ``script[route]`` lists the answers to come (the last
    one repeats; None is the default answer). Every route serves ``files``."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=lambda: dict(FILES))
    script: dict[str, list[Behaviour | None]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0

    def reset(self) -> None:
        self.__dict__.update({**FaultHub().__dict__, "url": self.url})

    def file_for(self, seen: Seen) -> bytes:
        return self.files[seen.path.rsplit("/", 1)[-1]]

    def seen(self, route: str) -> list[Seen]:
        return [r for r in self.requests if _route(r) == route]

    def _default(self, route: str, seen: Seen) -> Behaviour:
        if route == "show":
            return answer(_detail(self.files))
        if route in ("resolve", "bucket"):
            return ok()
        if route == "whoami":
            return answer({"name": "admin", "scope": "admin", "orgs": []})
        if route == "preupload":
            plan = json.loads(seen.body)
            return answer({"uploads": [{"path": f["path"], "sha256": f["sha256"], "url": f"/api/blobs/{f['sha256']}",
                                        "method": "PUT", "headers": {}} for f in plan["files"]]})
        if route == "put":
            return answer({}, 201)
        if route == "commit":
            return answer({"revision": REV, "created": True, "files": []}, 201)
        return answer({"error": "not_found", "detail": seen.path}, 404)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = Seen(scope["method"], scope["path"],
                    {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}, body)
        self.requests.append(seen)
        route = _route(seen)
        queue = self.script.get(route)
        behaviour = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else None
        await (behaviour or self._default(route, seen))(self, seen, send)


def _route(seen: Seen) -> str:
    path = seen.path
    if "/resolve/" in path:
        return "resolve"
    if path.startswith("/bucket/"):
        return "bucket"
    if path.startswith("/api/blobs/"):
        return "put"
    for name in ("preupload", "commit", "whoami", "tokens"):
        if path.endswith(f"/{name}"):
            return name
    return "show" if path == "/api/adapters/admin/support" else "other"


@pytest.fixture(scope="module")
def _fault_server() -> Iterator[FaultHub]:
    hub = FaultHub()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hub, host="127.0.0.1", port=port, log_level="critical", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{port}"
    wait_until(lambda: server.started, 30, "fault hub")
    yield hub
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def fault(_fault_server) -> FaultHub:
    _fault_server.reset()
    return _fault_server


@pytest.fixture
def ws(tmp_path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path


def _client(hub: Any, root: Path, **kwargs: Any) -> HubClient:
    token = getattr(hub, "admin_token", TOKEN)
    return HubClient(hub.url, token, cache_dir=root / "cache", retry=kwargs.pop("retry", FAST), **kwargs)


def dir_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def assert_nothing_left(root: Path, out: Path | None = None, *, complete: dict[str, bytes] | None = None) -> None:
    """No temporary file or staging directory anywhere under ``root``; ``out``
    holds exactly ``complete``, or does not exist when ``complete`` is None."""
    debris = [p for p in root.rglob("*") if p.name.endswith((".incomplete", ".new", ".old")) or ".peft-hub-" in p.name]
    assert not debris, debris
    if out is not None:
        assert (dir_bytes(out) == complete) if complete is not None else not out.exists()
    for blob in (root / "cache" / "blobs").glob("*"):  # the cache holds only verified, read-only blobs
        assert sha(blob.read_bytes()) == blob.name and blob.stat().st_mode & 0o777 == 0o444, blob


# --- downloads: resume, restart, retry, give up -------------------------------------------


def test_a_cut_download_resumes_from_the_bytes_it_holds(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [cut(100_000), cut(50_000), cut(7), ok()]
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        pulled = client.pull("admin/support", out)
    assert pulled.revision == REV
    ranges = [r.headers.get("range") for r in fault.seen("resolve")]
    assert ranges == [None, "bytes=100000-", "bytes=150000-", "bytes=150007-"]
    assert fault.bytes_sent == len(WEIGHTS)  # no byte was sent twice
    assert_nothing_left(ws, out, complete=fault.files)


def test_a_server_without_range_support_restarts_the_file(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [cut(300_000, ranges=False), ok(ranges=False)]
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert [r.headers.get("range") for r in fault.seen("resolve")] == [None, "bytes=300000-"]  # got it whole
    assert_nothing_left(ws, out, complete=fault.files)


def test_a_resume_through_a_presigned_redirect_keeps_its_range(fault, ws):
    fault.script["resolve"] = [redirect(f"{fault.url}/bucket/adapter_model.safetensors?X-Amz-Signature=s")]
    fault.script["bucket"] = [cut(200_000), ok()]
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert [r.headers.get("range") for r in fault.seen("bucket")] == [None, "bytes=200000-"]
    assert_nothing_left(ws, out, complete={"adapter_model.safetensors": WEIGHTS})


async def _wrong_range(hub: FaultHub, seen: Seen, send: Send) -> None:
    data = hub.file_for(seen)
    await _start(send, 206, {"content-length": str(len(data) - 10),
                             "content-range": f"bytes 10-{len(data) - 1}/{len(data)}"})
    await _body(send, data[10:])


def test_a_206_for_another_range_restarts_without_ranges(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [cut(5000), _wrong_range, ok()]
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert [r.headers.get("range") for r in fault.seen("resolve")] == [None, "bytes=5000-", None]
    assert_nothing_left(ws, out, complete=fault.files)


async def _other_bytes(hub: FaultHub, seen: Seen, send: Send) -> None:
    status_, headers, data = _span(seen, b"\x01" * len(hub.file_for(seen)), True)
    await _start(send, status_, headers)
    await _body(send, data)


def test_resumed_bytes_that_do_not_hash_are_fetched_whole_once_more(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [cut(1000), _other_bytes, ok()]  # the resumed tail is wrong
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert [r.headers.get("range") for r in fault.seen("resolve")] == [None, "bytes=1000-", None]
    assert_nothing_left(ws, out, complete=fault.files)


def test_bytes_that_do_not_hash_name_the_adapter_and_the_file(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [_other_bytes]
    out = ws / "work" / "out"
    with _client(fault, ws) as client, pytest.raises(ChecksumMismatchError) as info:
        client.pull("admin/support", out)
    served = sha(b"\x01" * len(WEIGHTS))
    assert str(info.value) == (f"{LABEL}: adapter_model.safetensors: the hub served {len(WEIGHTS)} bytes hashing to "
                               f"{served}, not {sha(WEIGHTS)}")
    assert len(fault.seen("resolve")) == 1  # a wrong file is not a reason to ask again
    assert_nothing_left(ws, out)


def test_a_5xx_storm_that_recovers_is_ridden_out(fault, ws):
    fault.script["show"] = [status(503), status(502), answer(_detail(FILES))]
    fault.script["resolve"] = [status(500), status(504), status(503), ok()]
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert len(fault.seen("show")) == 3 and len(fault.seen("resolve")) == 5
    assert_nothing_left(ws, out, complete=FILES)


def test_a_5xx_that_does_not_pass_gives_up_after_the_attempts(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [status(503, b"Service Unavailable")]
    out = ws / "work" / "out"
    with _client(fault, ws) as client, pytest.raises(HubUnreachableError) as info:
        client.pull("admin/support", out)
    assert str(info.value).startswith(f"{LABEL}: adapter_model.safetensors: HTTP 503 from {fault.url}/api/")
    assert len(fault.seen("resolve")) == FAST.attempts
    assert_nothing_left(ws, out)


def test_a_4xx_is_not_retried(fault, ws):
    fault.script["resolve"] = [status(403, {"error": "forbidden", "detail": "no"})]
    with (_client(fault, ws) as client,
          pytest.raises(PermissionDeniedError, match=f"^{LABEL}: adapter_config.json: no$")):
        client.pull("admin/support", ws / "work" / "out")
    assert len(fault.seen("resolve")) == 1
    assert_nothing_left(ws, ws / "work" / "out")


def test_a_429_waits_as_long_as_retry_after_says(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    slow_down = status(429, {"error": "rate_limited", "detail": "slow down"}, {"retry-after": "1"})
    fault.script["resolve"] = [slow_down, ok()]
    out = ws / "work" / "out"
    start = time.monotonic()
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
    assert time.monotonic() - start >= 1.0
    assert len(fault.seen("resolve")) == 2
    assert_nothing_left(ws, out, complete=fault.files)


def test_a_retry_after_beyond_the_budget_stops_at_once(fault, ws):
    fault.script["show"] = [status(429, {"error": "rate_limited", "detail": "later"}, {"retry-after": "3600"})]
    start = time.monotonic()
    with _client(fault, ws) as client, pytest.raises(RateLimitedError) as info:
        client.pull("admin/support", ws / "work" / "out")
    assert time.monotonic() - start < 2 and info.value.retry_after == 3600
    assert len(fault.seen("show")) == 1


def test_a_stall_longer_than_the_read_timeout_resumes(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [stall(65536, 2.0), ok()]
    out = ws / "work" / "out"
    with _client(fault, ws, timeout=0.4) as client:
        client.pull("admin/support", out)
    assert [r.headers.get("range") for r in fault.seen("resolve")] == [None, "bytes=65536-"]
    assert_nothing_left(ws, out, complete=fault.files)


def test_a_stall_that_never_ends_is_a_clear_error(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [stall(1000, 1.5)]
    out = ws / "work" / "out"
    start = time.monotonic()
    retry = RetryPolicy(attempts=2, wait_initial=0.01, jitter=0.01)
    with _client(fault, ws, timeout=0.3, retry=retry) as client, pytest.raises(HubUnreachableError) as info:
        client.pull("admin/support", out)
    # Each try got 1000 bytes further, so each counted as progress: the tries in all are still bounded.
    assert str(info.value) == f"{LABEL}: adapter_model.safetensors: download failed after 8000 bytes: timed out"
    assert len(fault.seen("resolve")) == 2 * PROGRESS_FACTOR and time.monotonic() - start < 6
    assert_nothing_left(ws, out)


S3_NO_SUCH_KEY = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                  b"<Message>The specified key does not exist.</Message></Error>")


def test_a_presigned_get_answered_404_is_entry_not_found_naming_the_file(fault, ws):
    fault.files = {"adapter_model.safetensors": WEIGHTS}
    fault.script["resolve"] = [redirect(f"{fault.url}/bucket/x?X-Amz-Signature=secret")]
    fault.script["bucket"] = [status(404, S3_NO_SUCH_KEY, {"content-type": "application/xml"})]
    with _client(fault, ws) as client, pytest.raises(EntryNotFoundError) as info:
        client.pull("admin/support", ws / "work" / "out")
    assert str(info.value).startswith(f"{LABEL}: adapter_model.safetensors: the hub's store does not have it")
    assert "NoSuchKey" in str(info.value) and "secret" not in str(info.value)
    assert len(fault.seen("bucket")) == 1
    assert_nothing_left(ws, ws / "work" / "out")


# --- uploads and the commit ------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path) -> Path:
    path = tmp_path / "support"
    path.mkdir()
    for name, data in FILES.items():
        (path / name).write_bytes(data)
    return path


async def _slow_created(hub: FaultHub, seen: Seen, send: Send) -> None:
    await asyncio.sleep(1.0)
    await answer({}, 201)(hub, seen, send)


def test_uploads_and_the_commit_are_retried(fault, adapter, ws):
    fault.script["preupload"] = [status(502), cut_json({}), None]
    fault.script["put"] = [status(503), _slow_created, status(500), answer({}, 201)]
    fault.script["commit"] = [cut_json({"revision": REV}),
                              answer({"revision": REV, "created": False, "files": []}, 201)]
    with _client(fault, ws, timeout=0.4) as client:
        result = client.push(adapter, name="admin/support")
    assert result.revision == REV and result.files_uploaded == 2
    puts = fault.seen("put")
    assert len(puts) == 5 and all(r.body == FILES[_name_of(r)] for r in puts)  # each try sent the whole file
    assert len(fault.seen("preupload")) == 3 and len(fault.seen("commit")) == 2


def _name_of(seen: Seen) -> str:
    return next(n for n, d in FILES.items() if seen.path.endswith(sha(d)))


@pytest.mark.parametrize("failure", [status(503), cut_json({"token": "phub_x"})], ids=["503", "cut"])
def test_a_request_that_is_not_idempotent_is_sent_once(fault, ws, failure):
    fault.script["tokens"] = [failure, answer({"token": "phub_second"})]
    with _client(fault, ws) as client, pytest.raises(HubUnreachableError):
        client.create_token(scope="read")
    assert len(fault.seen("tokens")) == 1


def test_which_failures_are_retried():
    assert transient(httpx.ConnectError("refused"), idempotent=False)  # never reached the server
    assert not transient(httpx.ReadTimeout("slow"), idempotent=False)
    assert transient(httpx.ReadTimeout("slow"), idempotent=True)
    assert not transient(httpx.UnsupportedProtocol("ftp"), idempotent=True)
    for code, retried in ((500, True), (502, True), (503, True), (504, True), (501, False), (404, False), (409, False)):
        exc = PeftHubError("x")
        exc.http_status = code
        assert transient(exc, idempotent=True) is retried, code
    exc.http_status = 429
    assert transient(exc, idempotent=False)


def test_timeouts_are_explicit_and_configurable(monkeypatch):
    assert timeouts() == httpx.Timeout(connect=10, read=60, write=60, pool=10)
    monkeypatch.setenv("PEFT_HUB_TIMEOUT", "5")
    monkeypatch.setenv("PEFT_HUB_CONNECT_TIMEOUT", "2")
    assert HubClient("http://127.0.0.1:1").http.timeout == httpx.Timeout(connect=2, read=5, write=5, pool=2)
    assert timeouts(1.5) == httpx.Timeout(connect=2, read=1.5, write=1.5, pool=2)
    monkeypatch.delenv("PEFT_HUB_CONNECT_TIMEOUT")
    assert timeouts(1.5) == httpx.Timeout(1.5)  # connecting never waits longer than reading by default
    monkeypatch.setenv("PEFT_HUB_TIMEOUT", "soon")
    with pytest.raises(InvalidInputError, match="PEFT_HUB_TIMEOUT"):
        HubClient("http://127.0.0.1:1")
    monkeypatch.setenv("PEFT_HUB_RETRIES", "-2")
    monkeypatch.delenv("PEFT_HUB_TIMEOUT")
    with pytest.raises(InvalidInputError, match="PEFT_HUB_RETRIES"):
        HubClient("http://127.0.0.1:1")


# --- the cache never serves edited bytes ---------------------------------------------------


def _blob(ws: Path, data: bytes) -> Path:
    return ws / "cache" / "blobs" / sha(data)


def test_an_output_directory_is_a_copy_and_cached_blobs_are_read_only(fault, ws):
    out = ws / "work" / "out"
    with _client(fault, ws) as client:
        client.pull("admin/support", out)
        (out / "adapter_model.safetensors").write_bytes(b"edited by the user")
        with open(out / "adapter_config.json", "r+b") as fh:
            fh.write(b"X")  # in place
        again = client.pull("admin/support", ws / "work" / "again")
    assert again.bytes_downloaded == 0 and dir_bytes(again.path) == FILES
    blob = _blob(ws, WEIGHTS)
    assert not os.path.samefile(blob, out / "adapter_model.safetensors")
    assert blob.stat().st_mode & 0o777 == 0o444


def _edit_in_place(path: Path, data: bytes, *, keep_mtime: bool) -> None:
    st = path.stat()
    os.chmod(path, 0o644)  # what it takes when not root; root writes through 0444 anyway
    with open(path, "r+b") as fh:
        fh.write(data)
    os.chmod(path, 0o444)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-restored"])
def test_an_edited_snapshot_is_fetched_again_never_handed_over(fault, ws, keep_mtime):
    with _client(fault, ws) as client:
        snapshot = client.pull("admin/support").path
        assert os.path.samefile(snapshot / "adapter_model.safetensors", _blob(ws, WEIGHTS))
        _edit_in_place(snapshot / "adapter_model.safetensors", b"\xff" * 64, keep_mtime=keep_mtime)
        again = client.pull("admin/support")  # a snapshot copies nothing: the stamp alone must catch it
        assert again.bytes_downloaded == len(WEIGHTS) and dir_bytes(again.path) == FILES
        out = ws / "work" / "out"
        assert client.pull("admin/support", out).bytes_downloaded == 0
    assert_nothing_left(ws, out, complete=FILES)


def test_a_change_the_stamp_misses_is_caught_while_copying(fault, ws):
    cache = BlobCache(ws / "cache")
    with _client(fault, ws) as client:
        client.pull("admin/support")
        _edit_in_place(_blob(ws, WEIGHTS), b"\xff" * 64, keep_mtime=True)
        cache.restamp(sha(WEIGHTS))  # as if the edit had left no trace at all
        assert cache.checked(sha(WEIGHTS), len(WEIGHTS)) is not None
        out = ws / "work" / "out"
        assert client.pull("admin/support", out).bytes_downloaded == len(WEIGHTS)
    assert_nothing_left(ws, out, complete=FILES)


def test_a_cached_blob_cut_short_is_fetched_again(fault, ws):
    with _client(fault, ws) as client:
        client.pull("admin/support")
        blob = _blob(ws, WEIGHTS)
        os.chmod(blob, 0o644)
        os.truncate(blob, 100)
        assert client.pull("admin/support", ws / "work" / "out").bytes_downloaded == len(WEIGHTS)
    assert_nothing_left(ws, ws / "work" / "out", complete=FILES)


def test_cache_verify_reports_then_repairs(fault, ws, monkeypatch):
    with _client(fault, ws) as client:
        client.pull("admin/support")
    _edit_in_place(_blob(ws, WEIGHTS), b"\x07" * 8, keep_mtime=True)
    (ws / "cache" / "blobs" / f"{sha(CONFIG)}.abc123.incomplete").write_bytes(b"left by a killed pull")
    staging = ws / "cache" / "snapshots" / "admin" / "support" / f".{REV}.peft-hub-x1.incomplete"
    staging.mkdir()
    monkeypatch.setenv("PEFT_HUB_CACHE", str(ws / "cache"))
    runner = CliRunner()

    result = runner.invoke(cli, ["cache", "verify"])
    assert result.exit_code == 1, result.output
    assert f"corrupt   blob {sha(WEIGHTS)}" in result.output and "leftover" in result.output
    assert f"snapshots/admin/support/{REV}" in result.output
    assert _blob(ws, WEIGHTS).exists() and staging.exists()  # a report alone removes nothing

    result = runner.invoke(cli, ["cache", "verify", "--repair"])
    assert result.exit_code == 0 and "(removed)" in result.output, result.output
    assert not _blob(ws, WEIGHTS).exists() and not staging.exists()
    report = BlobCache(ws / "cache").verify()
    assert report.clean and report.blobs == 1

    assert "0 snapshot(s)" in runner.invoke(cli, ["cache", "info"]).output
    with _client(fault, ws) as client:
        assert client.pull("admin/support").bytes_downloaded == len(WEIGHTS)
    listed = runner.invoke(cli, ["cache", "ls"]).output
    assert f"admin/support@{REV[:12]}  2" in listed
    assert_nothing_left(ws)


# --- a killed CLI: what it leaves, the next run removes ---------------------------------------


def _cli_env(fault: FaultHub, ws: Path) -> dict[str, str]:
    return {**os.environ, "PEFT_HUB_URL": fault.url, "PEFT_HUB_TOKEN": TOKEN, "PEFT_HUB_CACHE": str(ws / "cache"),
            "PEFT_HUB_HOME": str(ws / "home"), "PEFT_HUB_DISABLE_PROGRESS_BARS": "1", "PEFT_HUB_RETRY_WAIT": "0.01"}


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    try:
        wait_until(ready, 20, what)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.integration  # a subprocess or a model trained: slow
def test_a_pull_killed_mid_download_is_cleaned_up_by_the_next(fault, ws):
    fault.script["resolve"] = [ok(), trickle(16384, 0.05), ok()]  # the weights come slowly the first time
    out = ws / "work" / "out"
    env = _cli_env(fault, ws)
    pull = [sys.executable, "-m", "peft_hub", "pull", "admin/support", "-o", str(out)]
    proc = subprocess.Popen(pull, env=env, cwd=ws / "work", stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def partial() -> list[Path]:
        return [p for p in (ws / "cache" / "blobs").glob("*.incomplete") if p.stat().st_size > 0]

    _kill_when(proc, lambda: bool(partial()), "a partial download")
    assert partial() and not out.exists()  # what a SIGKILL leaves

    done = subprocess.run(pull, env=env, cwd=ws / "work", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"admin/support@{REV} -> {out}" in done.stdout
    assert_nothing_left(ws, out, complete=FILES)


KILLED_IN_ASSEMBLY = """
import sys, time
import peft_hub.client.assemble as cache
copy = cache._copy_checked
def copy_then_hang(src, dst, sha256):
    copy(src, dst, sha256)
    time.sleep(60)
cache._copy_checked = copy_then_hang
sys.argv = ["peft-hub", *sys.argv[1:]]
from peft_hub.cli import main
main()
"""


@pytest.mark.integration  # a subprocess or a model trained: slow
def test_a_pull_killed_mid_assembly_keeps_the_old_output_and_the_next_cleans_up(fault, ws):
    out = ws / "work" / "out"
    env = _cli_env(fault, ws)
    pull = ["pull", "admin/support", "-o", str(out)]
    first = subprocess.run([sys.executable, "-m", "peft_hub", *pull], env=env, cwd=ws / "work", capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    (out / "adapter_config.json").write_bytes(b"edited")  # the earlier pull, edited, and a file of the user's
    (out / "notes.txt").write_bytes(b"mine")
    old = dir_bytes(out)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IN_ASSEMBLY, *pull],
                            env=env, cwd=ws / "work", stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def staging() -> list[Path]:  # an existing directory is staged inside itself, never in its parent
        return list(out.glob(".out.peft-hub-*.incomplete"))

    _kill_when(proc, lambda: bool(staging()) and any(p.iterdir() for p in staging()), "a half-built output")
    assert staging() and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old  # nothing moved in

    done = subprocess.run([sys.executable, "-m", "peft_hub", *pull], env=env,
                          cwd=ws / "work", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert_nothing_left(ws, out, complete={**FILES, "notes.txt": b"mine"})


# --- a real hub whose store lost or damaged a blob ------------------------------------------


def _push(hub: Any, adapter: Path, root: Path) -> str:
    with _client(hub, root / "pusher") as client:
        return client.push(adapter, name="admin/support").revision


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_blob_the_hubs_store_lost_or_damaged_is_one_clear_error(hub, adapter, tmp_path, damage, monkeypatch):
    root = tmp_path / "client"
    revision = _push(hub, adapter, root)
    store, blob = hub.app.state.store, sha(WEIGHTS)
    if damage == "deleted":
        store.delete(blob)
    elif hub.backend == "embedded":
        path = store.local_path(blob)
        os.chmod(path, 0o644)
        path.write_bytes(b"\x01" * 41)
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(blob), Body=b"\x01" * 41)
    out = root / "out"
    monkeypatch.setenv("PEFT_HUB_CACHE", str(root / "cache"))
    result = CliRunner().invoke(cli, ["--url", hub.url, "--token", hub.admin_token, "pull", "admin/support",
                                      "-o", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"Error: admin/support@{revision[:12]}: adapter_model.safetensors: "), lines[0]
    with _client(hub, root) as client, pytest.raises(PeftHubError) as info:
        client.pull("admin/support", out)
    if damage == "corrupted":
        assert type(info.value) is ChecksumMismatchError and "41 bytes" in str(info.value)
    elif hub.backend == "s3-postgres":  # the presigned GET is answered 404 NoSuchKey
        assert type(info.value) is EntryNotFoundError, info.value
    else:  # the hub itself answers; today a bare 500 (retried, then shown as one line)
        assert type(info.value) in (EntryNotFoundError, StorageError, PeftHubError), info.value
    assert_nothing_left(root, out)
