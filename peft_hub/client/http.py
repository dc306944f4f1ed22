"""The one HTTP session every call goes through, error mapping, timeouts and retries.

Everything here assumes the far end may be broken or hostile: error bodies
are read with a cap, their text is stripped of control characters before it
can reach a terminal, and URLs are shown without their query strings, which
is where presigned URLs carry their signatures.

Failures that may pass (a refused or cut connection, a timeout, a 5xx, a 429)
are retried with exponential backoff and jitter (tenacity), a bounded number
of times and for a bounded total wait, and only where a repeat is harmless:
a request that is idempotent, or one that provably never reached the server.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity

from peft_hub import __version__
from peft_hub.errors import HubUnreachableError, InvalidInputError, PeftHubError, RateLimitedError, error_from_code

#: How much of an error body is read: enough for any message, not a flood.
ERROR_BODY_LIMIT = 64 * 1024
#: How much of a server's message is kept in the exception.
MESSAGE_LIMIT = 2000
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # ESC, CR, bidi overrides, ...
_S3_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,1000})</\1>")


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
        detail = response.headers.get("x-error-message") or f"HTTP {response.status_code} from {redact(response.request.url)}"
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
    error.http_status = response.status_code  # type: ignore[attr-defined]
    error.retry_after_header = _retry_after(response.headers.get("retry-after"))  # type: ignore[attr-defined]
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


# --- timeouts and retries ------------------------------------------------------

#: Methods whose repeat is harmless by definition (RFC 9110 9.2.2), DELETE aside:
#: a repeated DELETE that succeeded the first time answers 404.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
#: Failures that prove the request never reached the server: any request may be sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport failures that will not pass by trying again.
_PERMANENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
#: A download that keeps getting further makes at most this many times the attempts.
PROGRESS_FACTOR = 4


def _env_number(name: str, default: float, *, integer: bool = False, positive: bool = False) -> float:
    """``$name`` as a number (``default`` when unset); anything else is one clear error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not (value > 0 if positive else value >= 0) or value >= 1e7:
        kind = "a whole number" if integer else "a number of seconds"
        raise InvalidInputError(f"${name} must be {kind} ({'more than 0' if positive else '0 or more'}), "
                                f"not {text!r:.40}")
    return value


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
    io = float(timeout) if timeout is not None else _env_number("PEFT_HUB_TIMEOUT", 60.0, positive=True)
    connect = _env_number("PEFT_HUB_CONNECT_TIMEOUT", min(10.0, io), positive=True)
    return httpx.Timeout(connect=connect, read=io, write=io, pool=connect)


def transient(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether ``exc`` may pass on its own and the request may be sent again.

    A request that is not idempotent is sent again only when it provably
    never reached the server (no connection) or was refused unprocessed (429).
    """
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, _PERMANENT) and (idempotent or isinstance(exc, _NOT_SENT))
    status = getattr(exc, "http_status", None)
    if status == 429:
        return True
    return idempotent and isinstance(status, int) and 500 <= status <= 599 and status not in (501, 505)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how long, a failure that may pass is retried.

    Attributes:
        attempts: the most tries of one request in a row that make no
            progress, the first included (1: never retry). A download that
            got further before it failed starts counting again, but makes at
            most ``PROGRESS_FACTOR`` times as many tries in all.
        max_wait: the most seconds spent waiting between tries, in total.
            A Retry-After longer than what is left ends the retries at once.
        wait_initial: the first backoff; each further one doubles, plus up
            to ``jitter`` seconds at random, never more than ``wait_max``.
    """

    attempts: int = 5
    max_wait: float = 30.0
    wait_initial: float = 0.25
    wait_max: float = 8.0
    jitter: float = 0.25

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The defaults, or ``$PEFT_HUB_RETRIES`` (attempts), ``$PEFT_HUB_RETRY_MAX_WAIT``
        and ``$PEFT_HUB_RETRY_WAIT`` (the first backoff, in seconds)."""
        return cls(
            attempts=max(1, int(_env_number("PEFT_HUB_RETRIES", cls.attempts, integer=True))),
            max_wait=_env_number("PEFT_HUB_RETRY_MAX_WAIT", cls.max_wait),
            wait_initial=_env_number("PEFT_HUB_RETRY_WAIT", cls.wait_initial),
        )

    def retrying(
        self, should_retry: Callable[[BaseException], bool], *, progress: Callable[[], int] | None = None
    ) -> tenacity.Retrying:
        """A tenacity loop (``for attempt in ...: with attempt: ...``) that retries
        what ``should_retry`` accepts and re-raises the last failure when it stops.

        Args:
            progress: how far the work has got (bytes held); a try that moved
                it forward does not count against ``attempts``.
        """
        state = {"failures": 0, "tries": 0, "mark": progress() if progress else 0}
        most = self.attempts * (PROGRESS_FACTOR if progress else 1)

        def retry(rs: tenacity.RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if exc is None or not should_retry(exc):
                return False
            now = progress() if progress else 0
            state["tries"] += 1
            state["failures"] = 1 if now > state["mark"] else state["failures"] + 1
            state["mark"] = max(now, state["mark"])
            return True

        def wait(rs: tenacity.RetryCallState) -> float:
            asked = getattr(rs.outcome.exception(), "retry_after_header", None) if rs.outcome else None
            if asked is not None:
                return float(asked)
            backoff = self.wait_initial * 2 ** (state["failures"] - 1) + random.uniform(0, self.jitter)
            return min(self.wait_max, backoff)

        def stop(rs: tenacity.RetryCallState) -> bool:
            return (state["failures"] >= self.attempts or state["tries"] >= most
                    or rs.idle_for + rs.upcoming_sleep > self.max_wait)

        return tenacity.Retrying(retry=retry, wait=wait, stop=stop, reraise=True, sleep=time.sleep)


NO_RETRY = RetryPolicy(attempts=1)


def build_session(
    base_url: str, token: str | None, transport: httpx.BaseTransport | None = None, *,
    timeout: float | httpx.Timeout | None = None,
) -> httpx.Client:
    """The client's one session: explicit timeouts (:func:`timeouts`), redirects never followed blindly."""
    headers = {"User-Agent": f"peft-hub/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        base_url=base_url, headers=headers, transport=transport, timeout=timeouts(timeout), follow_redirects=False,
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
