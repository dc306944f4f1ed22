"""Requests to a store's presigned URL over the stdlib's HTTP connection,
with the body's bytes kept out of Python where they can be.

- **Ranged GETs** read straight into a buffer of our own. httpx hands each
  chunk up as a new ``bytes`` that h11 has appended to and sliced out of its
  buffer; boto3 (through urllib3) instead has the stdlib's
  :class:`http.client.HTTPResponse` ``readinto`` a preallocated buffer, one
  ``recv_into`` per trip. For the ranges of a large pull that carry no
  credentials this module does the same, and the caller writes and hashes
  from a ``memoryview`` of that buffer.
- **A file's PUT** hands the file to the kernel (``socket.sendfile``): no
  read into a ``bytes``, no copy out of it. On two shared cores that is CPU
  the store, receiving, gets instead.

It is used only where it can promise what the session promises, and the
caller falls back to httpx otherwise (:func:`for_url` returns None): the
session's own transport as :func:`peft_hub.client.http.build_session` builds
it (not a custom or mock one), no proxy the session would route the URL
through, no auth flow or event hooks, and a plain ``http``/``https`` URL.
TLS uses the SSL context of the session's transport, so certificates and
host names are verified exactly as httpx verifies them. The session's
connect and read timeouts apply. Failures come out as the httpx exceptions
httpx would raise for them, so the retry policy decides on them the same way.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable
from typing import BinaryIO

import httpx

from peft_hub.client.http import ERROR_BODY_LIMIT, _Backend, raise_for_status


def for_url(session: httpx.Client, url: httpx.URL) -> Direct | None:
    """A :class:`Direct` for ``url`` on ``session``, or None where httpx must carry it."""
    transport = getattr(session, "_transport", None)
    pool = getattr(transport, "_pool", None)
    if type(transport) is not httpx.HTTPTransport or not isinstance(getattr(pool, "_network_backend", None), _Backend):
        return None
    route = getattr(session, "_transport_for_url", None)
    if route is None or route(url) is not transport:  # a proxy from the environment (or a mount) takes it
        return None
    if session.auth is not None or any(session.event_hooks.values()) or url.scheme not in ("http", "https"):
        return None
    context = getattr(pool, "_ssl_context", None)
    if url.scheme == "https" and not isinstance(context, ssl.SSLContext):
        return None
    return Direct(url, session.timeout, context)


#: A PUT's body goes to the kernel in blocks this large, each one reported as sent.
SEND_BLOCK = 8 * 1024 * 1024
#: After the body could not be sent, how long to wait for an answer the store sent first.
EARLY_ANSWER_WAIT = 2.0


class Direct:
    """Requests to one URL, one kept-alive connection per thread."""

    def __init__(self, url: httpx.URL, timeout: httpx.Timeout, context: ssl.SSLContext | None) -> None:
        self.url, self.timeout, self.context = url, timeout, context
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            host, port = self.url.host, self.url.port
            connect = self.timeout.connect
            if self.url.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=connect, context=self.context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=connect)
            try:
                conn.connect()
            except TimeoutError as exc:
                conn.close()
                raise httpx.ConnectTimeout(f"connecting to the store: {exc}") from exc
            except OSError as exc:  # refused, unreachable, or a certificate that does not verify
                conn.close()
                raise httpx.ConnectError(f"connecting to the store: {exc}") from exc
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout.read)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (the next GET opens a new one)."""
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            conn.close()

    def open(self, headers: httpx.Headers) -> Response:
        """Send the GET with ``headers`` (as httpx built them) and read the status and headers."""
        conn = self._connection()
        target = self.url.raw_path.decode("ascii")
        try:
            conn.request("GET", target, headers=dict(headers.multi_items()))
            return Response(self, conn.getresponse(), "GET")
        except BaseException as exc:
            self.close()
            raise _mapped(exc) from exc

    def put_file(self, headers: httpx.Headers, fh: BinaryIO, size: int, sent: Callable[[int], None], *,
                 offset: int = 0) -> Response:
        """PUT ``size`` bytes of ``fh`` from ``offset`` with ``headers`` (as httpx built them, Content-Length
        among them), handed to the kernel a block at a time, ``sent`` told of each block; then read
        the status and headers. A store that answers before it has the whole body (a signature it
        refuses, an expired URL) and stops reading has that answer returned, not lost behind the
        broken connection. A file shorter than ``size`` is an ``httpx.LocalProtocolError``, as httpx
        raises for a body shorter than its Content-Length."""
        conn = self._connection()
        try:
            conn.putrequest("PUT", self.url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
            for name, value in headers.multi_items():
                conn.putheader(name, value)
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout.write)
            done = 0
            try:
                while done < size:
                    n = conn.sock.sendfile(fh, offset + done, min(SEND_BLOCK, size - done))
                    if n == 0:
                        raise httpx.LocalProtocolError(f"the file ended after {done} of the {size} bytes announced")
                    done += n
                    sent(n)
            except OSError as exc:
                early = self._early_answer(conn)
                if early is None:
                    error = httpx.WriteTimeout if isinstance(exc, TimeoutError) else httpx.WriteError
                    raise error(f"sending to the store failed: {exc}") from exc
                return early
            conn.sock.settimeout(self.timeout.read)
            return Response(self, conn.getresponse(), "PUT")
        except BaseException as exc:
            self.close()
            raise _mapped(exc) from exc

    def _early_answer(self, conn: http.client.HTTPConnection) -> Response | None:
        """The answer a store sent before it stopped reading the body, if one can still be read."""
        try:
            assert conn.sock is not None
            conn.sock.settimeout(EARLY_ANSWER_WAIT)
            response = Response(self, conn.getresponse(), "PUT")
        except (OSError, http.client.HTTPException):
            return None
        return response if response.status_code >= 400 else None


class Response:
    """One answer: status, headers, and a body read into the caller's buffer."""

    def __init__(self, direct: Direct, raw: http.client.HTTPResponse, method: str) -> None:
        self._direct, self._raw, self._method = direct, raw, method
        self.status_code = raw.status
        self.headers = httpx.Headers(raw.getheaders())

    def raise_for_status(self) -> None:
        """The error httpx's path would raise for this status (the body read with a cap)."""
        if 200 <= self.status_code < 400:
            return
        try:
            body = self._raw.read(ERROR_BODY_LIMIT)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            self.close()
        headers = [(k, v) for k, v in self.headers.multi_items() if k not in ("content-length", "transfer-encoding")]
        raise_for_status(httpx.Response(self.status_code, headers=headers, content=body,
                                        request=httpx.Request(self._method, self._direct.url)))

    def readinto(self, view: memoryview) -> int:
        """Bytes of the body read into ``view`` (0 at its end, or where the connection ended)."""
        try:
            return self._raw.readinto(view)
        except BaseException as exc:
            self._direct.close()
            raise _mapped(exc, reading=True) from exc

    def close(self, *, reusable: bool = False) -> None:
        """Done with the answer: the connection is kept only if this body was read to its framed end."""
        if not (reusable and self._raw.isclosed() and not self._raw.will_close):
            self._direct.close()
        self._raw.close()


def _mapped(exc: BaseException, *, reading: bool = False) -> BaseException:
    """The httpx exception for a stdlib failure (others unchanged)."""
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"the store stopped sending: {exc}")
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(f"the store's answer broke HTTP: {type(exc).__name__} {exc}"[:300])
    if isinstance(exc, OSError):
        return (httpx.ReadError if reading else httpx.WriteError)(f"the connection to the store failed: {exc}")
    return exc

