"""The client's session honours proxies from the environment, as httpx does by itself."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest
from local_http import serve

from peft_hub.client import http as client_http


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, naming the target it was asked for."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.path)
        body = b"via proxy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    _Proxy.seen = []
    with serve(_Proxy) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_http_proxy_from_the_environment_carries_requests(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with client_http.build_session("http://hub.invalid", None) as session:
        response = session.get("/api/whoami")
    assert response.text == "via proxy"
    assert _Proxy.seen == ["http://hub.invalid/api/whoami"]


def test_no_proxy_skips_the_proxy(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    with client_http.build_session("http://hub.invalid", None, timeout=2) as session, \
            pytest.raises(client_http.httpx.ConnectError):
        session.get("/api/whoami")
    assert _Proxy.seen == []


def test_without_a_proxy_the_session_keeps_its_large_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "example.org")  # a bypass list alone names no proxy
    with client_http.build_session("http://hub.invalid", None) as session:
        backend = session._transport._pool._network_backend  # type: ignore[attr-defined]
    assert isinstance(backend, client_http._Backend)
