"""A file's PUT to a presigned URL handed to the kernel (``socket.sendfile``,
:mod:`peft_hub.client.rawhttp`) keeps every guarantee of the httpx path,
against real sockets: the exact bytes and headers, no credentials, retries of
what may pass and none of what will not, a store's early refusal read and
reported rather than lost behind the broken pipe, a file shorter than
announced refused, TLS verified as the session verifies it, and the hub's own
URLs (which carry the token) left to httpx."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import httpx
import pytest
from local_http import self_signed, serve

from peft_hub.adapter import FileEntry
from peft_hub.client import rawhttp
from peft_hub.client.http import build_session
from peft_hub.client.retry import RetryPolicy
from peft_hub.client.transfers import UploadTarget, upload
from peft_hub.errors import HubUnreachableError, PeftHubError, StorageError

FAST = RetryPolicy(attempts=3, max_wait=2, wait_initial=0.01, wait_max=0.02, jitter=0)
SIZE = 3 * 1024 * 1024 + 11


def _store(log: list, answers: list | None = None):
    """A store that reads each PUT's body whole and answers it with the next of ``answers`` (200 after)."""

    class Store(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_PUT(self):  # noqa: N802
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            if len(body) < length:  # the client gave up: no answer to send
                return
            log.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = answers.pop(0) if answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Store


@pytest.fixture
def put_file(monkeypatch):
    """The bytes each direct PUT was asked to send."""
    sent: list[int] = []
    real = rawhttp.Direct.put_file
    monkeypatch.setattr(rawhttp.Direct, "put_file", lambda self, h, fh, size, note, **kw: sent.append(size) or real(
        self, h, fh, size, note, **kw))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return sent


def _file(tmp_path: Path, size: int = SIZE) -> tuple[Path, FileEntry]:
    data = os.urandom(size)
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(data)
    return path, FileEntry(path.name, size, hashlib.sha256(data).hexdigest())


def _upload(url: str, path: Path, entry: FileEntry, *, hub: str = "http://hub.test", size: int | None = None,
            retry: RetryPolicy = FAST, timeout: float | None = None) -> int:
    """Upload through a session of ``hub`` with a token; returns the progress bar's final count."""
    if size is not None:
        entry = FileEntry(entry.path, size, entry.sha256)
    target = UploadTarget(httpx.URL(url), "PUT", {"x-amz-checksum-sha256": "c2lnbmVk", "x-amz-meta-uploader": "7"},
                          entry)
    bar = _Bar()
    with build_session(hub, "phub_secret", timeout=timeout) as session:
        upload(session, target, path, bar, retry=retry)  # type: ignore[arg-type]
    return bar.n


class _Bar:
    """A progress bar that only counts."""

    n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_a_presigned_put_sends_the_exact_bytes_through_the_kernel_without_the_token(tmp_path, put_file):
    path, entry = _file(tmp_path)
    log: list = []
    with serve(_store(log)) as store:
        n = _upload(f"http://127.0.0.1:{store.server_address[1]}/b/sha256/{entry.sha256}?X-Amz-Signature=a%2F1",
                    path, entry)
    assert put_file == [SIZE] and n == SIZE
    [(headers, body)] = log
    assert body == path.read_bytes()
    assert headers["x-amz-checksum-sha256"] == "c2lnbmVk" and headers["x-amz-meta-uploader"] == "7"
    assert headers["content-length"] == str(SIZE) and headers["host"] == f"127.0.0.1:{store.server_address[1]}"
    assert "authorization" not in headers and "cookie" not in headers


def test_a_transient_failure_is_retried_from_the_start_and_412_means_stored(tmp_path, put_file):
    path, entry = _file(tmp_path)
    log: list = []
    with serve(_store(log, [503, 200, 412])) as store:
        url = f"http://127.0.0.1:{store.server_address[1]}/b/blob"
        assert _upload(url, path, entry) == SIZE  # the bar counts the file once, not once per try
        _upload(url, path, entry)  # stored by someone else first: no error
    assert [body == path.read_bytes() for _, body in log] == [True, True, True]
    assert put_file == [SIZE] * 3


def test_a_refusal_sent_before_the_body_is_read_is_reported_not_retried(tmp_path, put_file):
    """A store that refuses a signature answers at the headers and closes without reading the
    body: the client's send breaks, and the answer it had already been sent is what it reports."""
    path, entry = _file(tmp_path, 64 * 1024 * 1024)
    tries = []

    class Refuser(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_PUT(self):  # noqa: N802
            tries.append(1)
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    with serve(Refuser) as store, pytest.raises(PeftHubError, match="403|expired|AccessDenied") as caught:
        _upload(f"http://127.0.0.1:{store.server_address[1]}/b/blob", path, entry)
    assert not isinstance(caught.value, HubUnreachableError)  # the store's answer, not "the connection broke"
    assert tries == [1]  # a refusal will not pass: sent once


def test_a_file_shorter_than_announced_is_refused_once(tmp_path, put_file):
    path, entry = _file(tmp_path)
    log: list = []
    with serve(_store(log)) as store, pytest.raises(StorageError, match="changed while it was uploaded"):
        _upload(f"http://127.0.0.1:{store.server_address[1]}/b/blob", path, entry, size=SIZE + 100, timeout=5)
    assert put_file == [SIZE + 100]  # not retried: the file will not grow by trying again
    assert log == []  # the store never got a complete body


def test_a_store_that_stops_reading_times_out_as_a_write(tmp_path, put_file):
    path, entry = _file(tmp_path, 64 * 1024 * 1024)
    stalled = threading.Event()

    class Staller(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_PUT(self):  # noqa: N802
            stalled.wait(10)  # reads nothing: the client's buffers fill

    try:
        with serve(Staller) as store, pytest.raises(HubUnreachableError, match="sending to the store failed"):
            _upload(f"http://127.0.0.1:{store.server_address[1]}/b/blob", path, entry,
                    retry=RetryPolicy(attempts=1), timeout=0.5)
    finally:
        stalled.set()


def test_the_hubs_own_url_goes_through_httpx_with_the_token(tmp_path, put_file):
    path, entry = _file(tmp_path)
    log: list = []
    with serve(_store(log)) as hub:
        base = f"http://127.0.0.1:{hub.server_address[1]}"
        _upload(f"{base}/api/blobs/{entry.sha256}", path, entry, hub=base)
    assert put_file == []
    [(headers, body)] = log
    assert body == path.read_bytes() and headers["authorization"] == "Bearer phub_secret"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_tls_is_verified_as_the_session_verifies_it(tmp_path, put_file, cert, monkeypatch):
    pem, server_context = cert
    path, entry = _file(tmp_path)
    log: list = []
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with serve(_store(log), server_context) as store:
        url = f"https://127.0.0.1:{store.server_address[1]}/b/blob"
        with pytest.raises(HubUnreachableError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            _upload(url, path, entry, retry=RetryPolicy(attempts=1))
        assert log == []
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # the session's transport trusts it (httpx reads this)
        _upload(url, path, entry)
    assert [body == path.read_bytes() for _, body in log] == [True]
    assert len(put_file) == 2  # both tries took the direct path; TLS decided, not the path
