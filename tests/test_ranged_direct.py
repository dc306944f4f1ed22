"""The ranged GETs to a presigned URL read into a buffer of their own
(:mod:`peft_hub.client.rawhttp`) keep every guarantee of the httpx path,
against real sockets: exact ranges, resumed cuts, a server that ignores
``Range``, short and long bodies, wrong Content-Range, TLS verified as the
session configures it, proxies from the environment (httpx carries those)."""

from __future__ import annotations

import hashlib
import http.server
import os
import ssl
import threading

import httpx
import pytest
from local_http import self_signed, serve

from peft_hub.client import ranged, rawhttp
from peft_hub.client.cache import BlobCache
from peft_hub.client.download import download
from peft_hub.client.http import _transport, build_session
from peft_hub.client.retry import RetryPolicy
from peft_hub.errors import ChecksumMismatchError, PeftHubError
from peft_hub.progress import tqdm

SIZE = 1_000_003
FAST = RetryPolicy(attempts=3, max_wait=2, wait_initial=0.01, wait_max=0.02, jitter=0)


def _store(data: bytes, misbehave=None, log: list | None = None):
    """A store honouring ``Range``; ``misbehave(handler, start, end)`` may answer instead (True when it did)."""

    class Store(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            spec = self.headers.get("Range", "").removeprefix("bytes=")
            if log is not None:
                log.append((spec, self.headers.get("Authorization")))
            start, _, end = spec.partition("-")
            start, end = (int(start), int(end or len(data) - 1)) if spec else (0, len(data) - 1)
            if misbehave is not None and misbehave(self, start, end):
                return
            body = data[start:end + 1]
            self.send_response(206 if spec else 200)
            if spec:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Store


def _hub(store_url: str):
    class Hub(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"{store_url}/blob?X-Amz-Signature=abc%2F1")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Hub


@pytest.fixture
def small_ranges(monkeypatch):
    monkeypatch.setattr(ranged, "MIN_SIZE", 64 * 1024)
    monkeypatch.setattr(ranged, "PART", 40_000)
    monkeypatch.setattr(ranged, "_READ", 16 * 1024 + 1)  # several reads per span, none aligned to it
    used: list = []
    real = rawhttp.Response.readinto
    monkeypatch.setattr(rawhttp.Response, "readinto", lambda self, view: used.append(1) or real(self, view))
    return used


def _pull(data: bytes, misbehave=None, *, tmp_path, log=None, sha=None, tls=None, scheme="http"):
    cache = BlobCache(tmp_path / "cache")
    with serve(_store(data, misbehave, log), tls) as store:
        store_url = f"{scheme}://127.0.0.1:{store.server_address[1]}"
        with serve(_hub(store_url)) as hub, tqdm(disable=True) as bar:
            session = build_session(f"http://127.0.0.1:{hub.server_address[1]}", "phub_secret", timeout=5)
            with session:
                return download(session, "/f", sha or hashlib.sha256(data).hexdigest(), len(data), cache, bar,
                                retry=FAST, mirror=tmp_path / "mirror.bin")


def _nothing_left(tmp_path):
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []
    assert not (tmp_path / "mirror.bin").exists()
    assert [t for t in threading.enumerate() if t.name.startswith("range")] == []


def test_the_direct_path_gets_the_bytes_without_the_token(tmp_path, small_ranges):
    data = os.urandom(SIZE)
    log: list = []
    blob = _pull(data, tmp_path=tmp_path, log=log)
    assert blob.read_bytes() == data and (tmp_path / "mirror.bin").read_bytes() == data
    assert small_ranges  # the buffer path carried the ranges
    assert sorted(spec for spec, _ in log) == sorted(f"{a}-{min(a + 40_000, SIZE) - 1}" for a in range(0, SIZE, 40_000))
    assert {auth for _, auth in log} == {None}


def test_a_cut_mid_range_resumes_from_the_bytes_held(tmp_path, small_ranges):
    data = os.urandom(SIZE)
    cut: set = set()
    log: list = []

    def cut_once(handler, start, end):  # half the span, then the connection drops
        if start % 40_000 or start < 80_000 or start in cut or end + 1 - start <= 20_000:
            return False
        cut.add(start)
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{SIZE}")
        handler.send_header("Content-Length", str(end + 1 - start))
        handler.end_headers()
        handler.wfile.write(data[start:start + 20_000])
        handler.wfile.flush()
        handler.close_connection = True
        return True

    assert _pull(data, cut_once, tmp_path=tmp_path, log=log).read_bytes() == data
    assert cut and {f"{a + 20_000}-{min(a + 40_000, SIZE) - 1}" for a in cut} <= {spec for spec, _ in log}


def test_a_store_that_keeps_cutting_fails_cleanly(tmp_path, small_ranges):
    data = os.urandom(SIZE)

    def always_short(handler, start, end):
        if start < 80_000:
            return False
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{SIZE}")
        handler.send_header("Content-Length", str(end + 1 - start))
        handler.end_headers()
        handler.close_connection = True  # not a byte of the body
        return True

    with pytest.raises(PeftHubError):
        _pull(data, always_short, tmp_path=tmp_path)
    _nothing_left(tmp_path)


@pytest.mark.parametrize("bad", ["ignores-range", "wrong-content-range", "short-length", "long-unframed", "403"])
def test_a_bad_answer_on_the_direct_path_is_refused(tmp_path, small_ranges, bad):
    data = os.urandom(SIZE)

    def hostile(handler, start, end):
        if start < 80_000:
            return False
        body = data[start:end + 1]
        status, headers = 206, {"Content-Range": f"bytes {start}-{end}/{SIZE}", "Content-Length": str(len(body))}
        if bad == "ignores-range":
            status, body, headers = 200, data, {"Content-Length": str(SIZE)}
        elif bad == "wrong-content-range":
            headers["Content-Range"] = f"bytes {start + 1}-{end}/{SIZE}"
        elif bad == "short-length":
            body = body[:-10]
            headers["Content-Length"] = str(len(body))
        elif bad == "long-unframed":  # no length: the body ends where the connection closes, one byte late
            del headers["Content-Length"]
            body += b"x"
            handler.close_connection = True
        else:
            status, body = 403, b"<Error><Code>AccessDenied</Code><Message>expired</Message></Error>"
            headers = {"Content-Length": str(len(body))}
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)
        return True

    with pytest.raises(PeftHubError) as caught:
        _pull(data, hostile, tmp_path=tmp_path)
    if bad == "403":
        assert "AccessDenied: expired" in str(caught.value)
    else:
        assert isinstance(caught.value, ChecksumMismatchError)
    _nothing_left(tmp_path)


def test_extra_bytes_after_a_framed_body_never_reach_the_file(tmp_path, small_ranges):
    """Junk after a body of the right length is the next answer's start on a kept connection:
    that answer is refused as broken HTTP and retried on a new connection."""
    data = os.urandom(SIZE)

    def junk(handler, start, end):
        body = data[start:end + 1]
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{SIZE}")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body + b"JUNK" * 3)
        return True

    assert _pull(data, junk, tmp_path=tmp_path).read_bytes() == data


def test_only_the_sessions_own_transport_without_proxies_takes_the_direct_path(monkeypatch):
    url = httpx.URL("http://store.test:9000/blob?sig=1")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with build_session("http://hub.test", None) as session:
        assert rawhttp.for_url(session, url) is not None
        assert rawhttp.for_url(session, httpx.URL("ftp://store.test/x")) is None
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    with build_session("http://hub.test", None, transport=mock) as session:
        assert rawhttp.for_url(session, url) is None
    # A proxy the session routes the URL through (a mount, as httpx makes for an environment proxy
    # when it builds its own transport) takes it: so does the pull, through httpx.
    proxy = httpx.HTTPTransport(proxy="http://proxy.test:3128")
    with httpx.Client(transport=_transport(), mounts={"all://store.test": proxy}) as session:
        assert rawhttp.for_url(session, url) is None
        assert rawhttp.for_url(session, httpx.URL("http://other.test/blob")) is not None


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_tls_is_verified_as_the_session_verifies_it(tmp_path, small_ranges, cert, monkeypatch):
    pem, server_context = cert
    data = os.urandom(SIZE)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(PeftHubError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _pull(data, tmp_path=tmp_path / "untrusted", tls=server_context, scheme="https")
    assert not small_ranges  # refused at the first range, through httpx, before any direct GET
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # the session's transport trusts it (httpx reads this)
    assert _pull(data, tmp_path=tmp_path / "trusted", tls=server_context, scheme="https").read_bytes() == data
    assert small_ranges


def test_the_direct_path_itself_refuses_a_certificate_its_context_does_not_trust(cert):
    _, server_context = cert
    with serve(_store(b"x" * 10), server_context) as store:
        url = httpx.URL(f"https://127.0.0.1:{store.server_address[1]}/blob")
        direct = rawhttp.Direct(url, httpx.Timeout(5), ssl.create_default_context())
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            direct.open(httpx.Headers({"Range": "bytes=0-4"}))
