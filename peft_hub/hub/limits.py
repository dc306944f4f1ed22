"""Limits every request meets before any route, dependency or token check runs.

:class:`RequestLimits` is the outermost middleware. It refuses

- a path or query string with control characters (NUL included) once
  percent-decoded, or an overlong one: 422 ``invalid_input``;
- a body larger than its route's cap (:data:`BODY_CAPS`): by
  ``Content-Length`` before a byte is read, or, for chunked bodies, as soon
  as the bytes counted so far pass the cap: 413 ``payload_too_large``;
- JSON nested deeper than :data:`~peft_hub.safeparse.MAX_DEPTH` in any body
  that is not an upload or a form: 422 ``invalid_input``, before FastAPI
  parses it (its parser would recurse into a RecursionError and a 500).

Upload routes are never buffered: their bytes are counted as the route
streams them. Other bodies are small by their cap, so they are read whole,
checked, and replayed to the app. Refusals use the hub's one error renderer,
so they look like every other error.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from peft_hub.adapter_files import WEIGHTS_MAX_BYTES
from peft_hub.errors import InvalidInputError, PayloadTooLargeError, PeftHubError
from peft_hub.hub.hf.commit import INLINE_MAX_BYTES, MAX_FILES
from peft_hub.safeparse import MAX_DEPTH, check_depth

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KiB, MiB = 1024, 1024 * 1024
DEFAULT_CAP = 1 * MiB
#: An HF commit is NDJSON: up to MAX_FILES inline files, base64 (4/3 larger), plus a line of JSON each.
HF_COMMIT_CAP = MAX_FILES * (INLINE_MAX_BYTES * 4 // 3 + 64 * KiB) + 1 * MiB

#: (method, path, cap in bytes, streamed). The first match wins; every other
#: request may carry DEFAULT_CAP. Streamed bodies are uploads the route reads
#: as they arrive; the rest are buffered and checked here first.
BODY_CAPS: list[tuple[str, re.Pattern[str], int, bool]] = [
    ("PUT", re.compile(r"/api/blobs/[^/]+"), WEIGHTS_MAX_BYTES, True),
    ("PUT", re.compile(r"/api/hf/lfs/[^/]+"), WEIGHTS_MAX_BYTES, True),
    ("POST", re.compile(r"/api/models/[^/]+/[^/]+/commit/.+"), HF_COMMIT_CAP, True),
    # A model card (1 MiB) sent as a JSON string, escapes included.
    ("POST", re.compile(r"/api/validate-yaml"), 4 * MiB, False),
    ("POST", re.compile(r"/(?:login|logout)"), 64 * KiB, False),
]

MAX_PATH_CHARS = 4096
MAX_QUERY_BYTES = 32 * KiB
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
_FORMS = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def body_cap(method: str, path: str) -> tuple[int, bool]:
    """The most bytes a request may carry, and whether its route streams them."""
    for cap_method, pattern, cap, streamed in BODY_CAPS:
        if method == cap_method and pattern.fullmatch(path):
            return cap, streamed
    return DEFAULT_CAP, False


def target_problem(scope: Scope) -> str | None:
    """Why the request's path or query string is refused, or None."""
    path = scope.get("path", "")
    if len(path) > MAX_PATH_CHARS:
        return f"the path is longer than {MAX_PATH_CHARS} characters"
    if _CONTROL.search(path):
        return "the path contains a control character"
    query = scope.get("query_string", b"")
    if len(query) > MAX_QUERY_BYTES:
        return f"the query string is longer than {MAX_QUERY_BYTES} bytes"
    if query:
        decoded = unquote_to_bytes(query.replace(b"+", b" "))
        if _CONTROL_BYTES.search(decoded) or _CONTROL.search(decoded.decode("utf-8", "replace")):
            return "the query string contains a control character"
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _too_large(cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body is larger than the {cap} bytes this route accepts")


class RequestLimits:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = target_problem(scope)
        if problem:
            await self.refuse(scope, receive, send, InvalidInputError(problem))
            return
        cap, streamed = body_cap(scope["method"], scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            await self.refuse(scope, receive, send, _too_large(cap))
            return
        if streamed:
            await self.stream(scope, receive, send, cap)
        elif declared is None and _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body to read (RFC 9112, 6.3): nothing to check
        else:
            await self.buffer(scope, receive, send, cap)

    async def stream(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Pass the body through, counting; past the cap the route's next read raises."""
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise _too_large(cap)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except PayloadTooLargeError as exc:  # raised outside the app's own handlers
            if started:
                raise
            await self.refuse(scope, receive, send, exc)

    async def buffer(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Read a small body whole, check it, then hand it to the app."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left; nobody to answer
                return
            body += message.get("body", b"")
            if len(body) > cap:
                await self.refuse(scope, receive, send, _too_large(cap))
                return
            if not message.get("more_body", False):
                break
        kind = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        try:
            if kind == _FORMS[0] and (b"\x00" in body or b"%00" in body.lower()):
                raise InvalidInputError("the form contains a NUL character")
            if body and kind not in _FORMS:
                check_depth(bytes(body), max_depth=self.max_depth, what="the request body")
        except InvalidInputError as exc:
            await self.refuse(scope, receive, send, exc)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # e.g. a streaming response waiting for the disconnect

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send, exc: PeftHubError) -> None:
        """Answer with the hub's own error rendering, without running the app."""
        from starlette.requests import Request

        from peft_hub.hub.errors_http import render_error

        response = render_error(Request(scope), exc)
        await response(scope, receive, send)


class SizedCache:
    """A thread-safe LRU bounded by the total size of its values (as the
    caller weighs them), for work done once per immutable blob: a card's
    parsed header, its rendered HTML."""

    def __init__(self, max_bytes: int) -> None:
        import threading
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: Any, size: int) -> None:
        if size > self.max_bytes // 4:  # one huge value would evict everything else
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._items[key] = (value, size)
            self._size += size
            while self._size > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= dropped
