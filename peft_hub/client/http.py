"""The one HTTP session every call goes through, and error mapping."""

from __future__ import annotations

from typing import Any

import httpx

from peft_hub import __version__
from peft_hub.errors import HubUnreachableError, PeftHubError, error_from_code


def raise_for_status(response: httpx.Response) -> httpx.Response:
    """Turn an error response back into the exception the hub raised."""
    if response.is_success or response.is_redirect:
        return response
    code, detail = response.headers.get("x-error-code"), None
    try:
        body = response.json()
        if isinstance(body, dict):
            code, detail = body.get("error", code), body.get("detail")
    except ValueError:
        pass
    if detail is None:
        detail = response.headers.get("x-error-message") or f"HTTP {response.status_code} from {response.request.url}"
    raise error_from_code(code, str(detail), response.status_code)


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
        raise HubUnreachableError(f"cannot reach {session.base_url or url}: {exc}") from exc
    except PeftHubError:
        raise
