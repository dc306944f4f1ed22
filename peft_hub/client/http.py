"""The one HTTP session every call goes through, and error mapping.

Everything here assumes the far end may be broken or hostile: error bodies
are read with a cap, their text is stripped of control characters before it
can reach a terminal, and URLs are shown without their query strings, which
is where presigned URLs carry their signatures.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import httpx

from peft_hub import __version__
from peft_hub.errors import HubUnreachableError, PeftHubError, RateLimitedError, error_from_code

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
    error = error_from_code(code, clean_text(detail), response.status_code)
    if isinstance(error, RateLimitedError):
        retry_after = response.headers.get("retry-after", "")
        error.retry_after = int(retry_after) if retry_after.isdigit() and len(retry_after) < 7 else 60
    raise error


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


def build_session(base_url: str, token: str | None, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    headers = {"User-Agent": f"peft-hub/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        base_url=base_url, headers=headers, transport=transport,
        timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False,
    )


def send(session: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send a request; connection failures become HubUnreachableError."""
    try:
        return raise_for_status(session.request(method, url, **kwargs))
    except httpx.TransportError as exc:
        raise HubUnreachableError(f"cannot reach {session.base_url or redact(url)}: {exc}") from exc
    except httpx.HTTPError as exc:  # e.g. a body that fails to decode
        raise HubUnreachableError(f"bad response from {session.base_url or redact(url)}: {exc}") from exc
