"""The one HTTP session every call goes through, error mapping, timeouts and retries.

Everything here assumes the far end may be broken or hostile: error bodies
are read with a cap, their text is stripped of control characters before it
can reach a terminal, and URLs are shown without their query strings, which
is where presigned URLs carry their signatures.

Failures that may pass (a refused or cut connection, a timeout, a 5xx, a 429)
are retried as :mod:`peft_hub.client.retry` decides: a bounded number of
times, for a bounded total wait, and only where a repeat is harmless.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import unicodedata
import urllib.request
from typing import Any

import httpcore
import httpx

from peft_hub import __version__
from peft_hub.client.retry import IDEMPOTENT, NO_RETRY, RetryPolicy, env_number, transient
from peft_hub.errors import HubUnreachableError, PeftHubError, RateLimitedError, error_from_code

#: How much of an error body is read: enough for any message, not a flood.
ERROR_BODY_LIMIT = 64 * 1024
#: How much of a server's message is kept in the exception.
MESSAGE_LIMIT = 2000
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # ESC, CR, bidi overrides, ...
_S3_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,1000})</\1>")
#: Bytes asked of the socket per read (httpcore asks 64 KiB): a 100 MB body
#: in 4x fewer trips through httpcore and h11, a third less CPU per pull.
READ_BYTES = 256 * 1024


def origin(url: httpx.URL | str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with the default port filled in, for comparing origins."""
    url = httpx.URL(url)
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def redact(url: httpx.URL | str) -> str:
    """A URL fit for an error message: no user info, no query (presigned signatures live there)."""
    try:
        url = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    port = f":{url.port}" if url.port else ""
    return clean_text(f"{url.scheme}://{url.host}{port}{url.path}" if url.host else url.path, 300)


def clean_text(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Server text made safe to print: control and format characters escaped, length capped."""
    out = "".join(map(_printable, text[: limit + 1]))
    return out if len(out) <= limit else out[:limit] + "…"


def _printable(c: str) -> str:
    if c in "\n\t" or unicodedata.category(c) not in _UNPRINTABLE:
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _error_body(response: httpx.Response) -> bytes:
    """The first :data:`ERROR_BODY_LIMIT` bytes of a body, read even from a stream."""
    try:
        return response.content[:ERROR_BODY_LIMIT]
    except httpx.ResponseNotRead:
        pass
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data += chunk
            if len(data) >= ERROR_BODY_LIMIT:
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # the status alone still says what happened
    finally:
        response.close()
    return bytes(data[:ERROR_BODY_LIMIT])


def raise_for_status(response: httpx.Response) -> httpx.Response:
    """Turn an error response back into the exception the hub raised.

    Works on streamed responses too (their body is read here, with a cap).
    A body that is not the hub's JSON, such as S3's XML error or a proxy's
    page, still gives the class that fits the status and a readable message.
    """
    if response.is_success or response.is_redirect:
        return response
    body = _error_body(response)
    code = response.headers.get("x-error-code")
    detail: Any = None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            code = parsed["error"]
        detail = parsed.get("detail")
    elif fields := dict(_S3_FIELD.findall(body)):  # an object store's <Error><Code>…</Code><Message>…</Message>
        text = b": ".join(v for v in (fields.get(b"Code"), fields.get(b"Message")) if v)
        detail = f"{text.decode('utf-8', 'replace')} (HTTP {response.status_code} from {redact(response.request.url)})"
    if detail is None:
        where = f"HTTP {response.status_code} from {redact(response.request.url)}"
        detail = response.headers.get("x-error-message") or where
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False, default=str)
    # No route there (a proxy's page, or the framework's bare "Not Found"): a wrong URL, most likely.
    if response.status_code == 404 and (code is None or detail == "Not Found"):
        url = redact(response.request.url)
        detail = (f"{url} answered 404 ({detail[:80]}): that is not a peft-hub route; set PEFT_HUB_URL (or --url) "
                  "to the hub's root, e.g. http://127.0.0.1:8000, without /api")
    error = error_from_code(code, clean_text(detail), response.status_code)
    # What the retry policy decides on: the status as sent (the class may be
    # the hub's own, e.g. StorageError for a 500) and the wait the server asked for.
    error.http_status = response.status_code
    error.retry_after_header = _retry_after(response.headers.get("retry-after"))
    if isinstance(error, RateLimitedError):
        retry_after = response.headers.get("retry-after", "")
        error.retry_after = int(retry_after) if retry_after.isdigit() and len(retry_after) < 7 else 60
    raise error


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and len(value) < 7:
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


def json_body(response: httpx.Response) -> Any:
    """A response's JSON (None when empty); a body that is not JSON is a clear error."""
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise PeftHubError(
            f"the hub answered {redact(response.request.url)} with a body that is not JSON"
        ) from None


def build_request(session: httpx.Client, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
    """A request on the session, with the token and cookies only for the hub's own origin."""
    request = session.build_request(method, url, **kwargs)
    if origin(request.url) != origin(session.base_url):
        request.headers.pop("Authorization", None)
        request.headers.pop("Cookie", None)
    return request


# --- timeouts --------------------------------------------------------------------


def timeouts(timeout: float | httpx.Timeout | None = None) -> httpx.Timeout:
    """Explicit connect, read, write and pool timeouts.

    Args:
        timeout: seconds a read or write may stall (default ``$PEFT_HUB_TIMEOUT``,
            else 60), or a ready ``httpx.Timeout``. Connecting, and waiting for
            a pooled connection, get ``$PEFT_HUB_CONNECT_TIMEOUT`` (default 10,
            by default never more than the read timeout).
    """
    if isinstance(timeout, httpx.Timeout):
        return timeout
    io = float(timeout) if timeout is not None else env_number("PEFT_HUB_TIMEOUT", 60.0, positive=True)
    connect = env_number("PEFT_HUB_CONNECT_TIMEOUT", min(10.0, io), positive=True)
    return httpx.Timeout(connect=connect, read=io, write=io, pool=connect)



class _Stream(httpcore.NetworkStream):
    """A connection whose reads ask for at least :data:`READ_BYTES` (a read still returns what has arrived)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, READ_BYTES), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's own sockets, each wrapped in :class:`_Stream`."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _transport() -> httpx.HTTPTransport | None:
    """httpx's default transport, reading in :data:`READ_BYTES` (its pool's backend is
    not a public setting: where that changes, httpx's own backend stays, only slower).

    None where the environment names a proxy: httpx routes by ``HTTP(S)_PROXY`` and
    ``NO_PROXY`` only when it builds its transports itself."""
    if any(scheme != "no" for scheme in urllib.request.getproxies()):
        return None
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _Backend(backend)  # type: ignore[union-attr]
    return transport


def build_session(
    base_url: str, token: str | None, transport: httpx.BaseTransport | None = None, *,
    timeout: float | httpx.Timeout | None = None,
) -> httpx.Client:
    """The client's one session: explicit timeouts (:func:`timeouts`), redirects never followed blindly."""
    headers = {"User-Agent": f"peft-hub/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        base_url=base_url, headers=headers, transport=transport or _transport(), timeout=timeouts(timeout),
        follow_redirects=False,
    )


def unreachable(where: str, exc: BaseException) -> HubUnreachableError:
    """The one-line error for a hub that cannot be reached, with the likely fix."""
    where = where.rstrip("/")
    text = str(exc)
    if where.startswith("https://") and ("SSL" in text or "TLS" in text or "WRONG_VERSION" in text):
        return HubUnreachableError(f"cannot reach {where}: the TLS handshake failed, so the hub probably speaks plain "
                                   f"HTTP; use {'http://' + where.removeprefix('https://')}")
    if isinstance(exc, httpx.ConnectError):
        return HubUnreachableError(f"cannot reach {where}: nothing answers there (is `peft-hub serve` running? "
                                   "set PEFT_HUB_URL or --url to its address)")
    return HubUnreachableError(f"cannot reach {where}: {clean_text(text)}")


def send(
    session: httpx.Client, method: str, url: str, *, retry: RetryPolicy = NO_RETRY, idempotent: bool | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retried per ``retry`` when that is safe; connection failures
    become HubUnreachableError.

    Args:
        idempotent: whether a repeat is harmless (default: by method, see
            :data:`IDEMPOTENT`); a POST that is idempotent by content says so.
    """
    idempotent = method.upper() in IDEMPOTENT if idempotent is None else idempotent
    try:
        for attempt in retry.retrying(lambda exc: transient(exc, idempotent=idempotent)):
            with attempt:
                return raise_for_status(session.request(method, url, **kwargs))
    except httpx.TransportError as exc:
        raise unreachable(str(session.base_url) or redact(url), exc) from exc
    except httpx.HTTPError as exc:  # e.g. a body that fails to decode
        raise HubUnreachableError(f"bad response from {session.base_url or redact(url)}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises
