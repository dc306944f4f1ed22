"""Every error the hub answers with, rendered one way.

``{"error": code, "detail": message}`` (plus the error's own extra fields) on
one line, the same code and message as header-safe ``X-Error-*`` headers (the
Hugging Face code in ``X-Error-Code`` where huggingface_hub expects one), and
the error's own headers. :func:`install` registers the handlers that turn
errors of ours, of the database, of the store, of Starlette, and anything
unexpected (a logged 500) into that shape; routes only raise.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from peft_hub.errors import (
    AdapterNotFoundError,
    AuthenticationError,
    ConflictError,
    EntryNotFoundError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PeftHubError,
    PermissionDeniedError,
    RevisionNotFoundError,
    StorageError,
)
from peft_hub.hub.db import UNAVAILABLE, unavailable
from peft_hub.safeparse import one_line

log = logging.getLogger("peft_hub.hub")

#: Hugging Face clients read X-Error-Code to raise their own exception types.
HF_ERROR_CODES = {
    AdapterNotFoundError: "RepoNotFound",
    RevisionNotFoundError: "RevisionNotFound",
    EntryNotFoundError: "EntryNotFound",
}
#: Starlette's own errors (no route, wrong method, ...) in the hub's error shape.
HTTP_ERRORS: dict[int, type[PeftHubError]] = {
    400: InvalidInputError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: PayloadTooLargeError, 422: InvalidInputError,
}
MAX_DETAIL_CHARS = 2000
MAX_HEADER_CHARS = 200
#: A URL's query, where presigned URLs carry their signatures.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s\"'<>]*")


def without_queries(text: str) -> str:
    """``text`` with the query string cut from every URL in it."""
    return _URL_QUERY.sub(r"\1", text)


def header_safe(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` as a header value: printable ASCII on one line (others escaped), at most ``limit`` characters."""
    flat = one_line(text.encode("ascii", "backslashreplace").decode("ascii"), len(text) * 10 + 10)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _respond(request: Request, status: int, code: str, message: str, headers: dict[str, str],
             extra: dict[str, Any] | None = None) -> JSONResponse:
    headers = {"X-Error-Code": code, "X-Error-Message": header_safe(message), **headers}
    if request.method == "HEAD":
        return JSONResponse(None, status_code=status, headers=headers)
    body = {**(extra or {}), "error": code, "detail": one_line(message, MAX_DETAIL_CHARS)}
    return JSONResponse(body, status_code=status, headers=headers)


def render_error(request: Request, exc: PeftHubError) -> JSONResponse:
    """The one rendering of every error of ours (see the module docstring)."""
    message = without_queries(exc.message)
    headers = {key: header_safe(value, 1000) for key, value in getattr(exc, "headers", {}).items()}
    hf_code = next((code for cls, code in HF_ERROR_CODES.items() if isinstance(exc, cls)), None)
    retry_after = getattr(exc, "retry_after", None)  # 429, and the 503s of a busy or absent dependency
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = _respond(request, exc.status_code, exc.code, message, headers, getattr(exc, "extra", None))
    if hf_code:
        response.headers["X-Error-Code"] = hf_code
    return response


def install(app: FastAPI, settings: Any) -> None:
    """Register the handlers that render every failure through :func:`render_error`."""

    @app.exception_handler(PeftHubError)
    async def _hub_error(request: Request, exc: PeftHubError) -> JSONResponse:
        return render_error(request, exc)

    @app.exception_handler(IntegrityError)
    async def _race(request: Request, exc: IntegrityError) -> JSONResponse:
        # Two writers raced for the same unique row (e.g. the first push of a
        # name); the loser's transaction was rolled back whole.
        return render_error(request, ConflictError("a concurrent change won the race; retry the request"))

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        error = unavailable(exc)
        log.warning("%s %s: %s", request.method, request.url.path, error.message)
        return render_error(request, error)

    for cls in UNAVAILABLE:
        app.add_exception_handler(cls, _database_down)

    async def _storage_failed(request: Request, exc: Exception) -> JSONResponse:
        # Boto errors the store did not map itself (the store maps its own calls).
        store = request.app.state.store
        guard = getattr(getattr(store, "client", None), "failure", None)
        error = (guard(exc) if guard else None) or StorageError(f"storage ({store.where}) refused: {exc}")
        return render_error(request, error)

    if settings.storage.startswith("s3:"):
        from botocore.exceptions import BotoCoreError, ClientError

        app.add_exception_handler(BotoCoreError, _storage_failed)
        app.add_exception_handler(ClientError, _storage_failed)

    @app.exception_handler(OSError)
    async def _disk_failed(request: Request, exc: OSError) -> JSONResponse:
        # The hub's own file I/O is the local store's (ours subclass OSError too, and win by MRO).
        where = getattr(getattr(request.app.state, "store", None), "where", "blob store")
        return render_error(request, StorageError(f"storage ({where}) failed: {exc.strerror or exc}"))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [f"{'.'.join(str(p)[:64] for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        return render_error(request, InvalidInputError("; ".join(parts) + more))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = HTTP_ERRORS.get(exc.status_code)
        message = str(exc.detail)
        if cls is not None and cls.status_code == exc.status_code:
            response = render_error(request, cls(message))
        else:  # 405 and the like: no class of ours, the same shape
            code = cls.code if cls else "method_not_allowed" if exc.status_code == 405 else f"http_{exc.status_code}"
            response = _respond(request, exc.status_code, code, message, {})
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Not a fault of the hub's: the route's own cleanup has run (a write
        # is rolled back whole), and the answer reaches no one.
        log.info("%s %s: the client disconnected before its body ended; nothing was changed",
                 request.method, request.url.path)
        return render_error(request, InvalidInputError("the request's body ended early: the client disconnected"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: logged with its traceback under an id the client is told, so
        # the operator can find it; the client never sees the exception itself.
        incident = secrets.token_hex(4)
        log.error("%s %s failed unexpectedly (incident %s)", request.method, request.url.path, incident, exc_info=exc)
        return render_error(request, PeftHubError(f"internal error in the hub (incident {incident}, in its log)"))
