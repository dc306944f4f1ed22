"""Build the FastAPI app from settings: database, blob store, first admin,
routes, and the one handler that renders every error.

At start the hub waits, with exponential backoff and for at most
``startup_timeout`` seconds, for a database or store that does not answer
yet, saying what it waits for. Later failures of either are 503s (or 502s)
that name the dependency, never bare 500s.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from peft_hub import __version__
from peft_hub.errors import (
    AdapterNotFoundError, AuthenticationError, ConflictError, EntryNotFoundError, InvalidInputError, NotFoundError,
    PayloadTooLargeError, PeftHubError, PermissionDeniedError, RevisionNotFoundError, StorageError,
    StorageUnavailableError,
)
from peft_hub.hub import crud
from peft_hub.hub.config import Settings
from peft_hub.hub.db import BODY_CLOCK, UNAVAILABLE, describe, engine_from, unavailable
from peft_hub.hub.limits import RequestLimits
from peft_hub.hub.migrations import exclusive, upgrade
from peft_hub.hub.ratelimit import AuthLimiter
from peft_hub.hub.storage import open_store
from peft_hub.paths import save_token
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
T = TypeVar("T")


def without_queries(text: str) -> str:
    """``text`` with the query string cut from every URL in it."""
    return _URL_QUERY.sub(r"\1", text)


def header_safe(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` as a header value: printable ASCII on one line (others escaped), at most ``limit`` characters."""
    flat = one_line(text.encode("ascii", "backslashreplace").decode("ascii"), len(text) * 10 + 10)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def bootstrap(engine, settings: Settings) -> str | None:  # noqa: ANN001
    """On an empty database, create the first admin and its token.

    Every replica calls this as it starts. The check and the creation run
    under the lock migrations take (``migrations.exclusive``, held until the
    commit), so exactly one replica creates the admin, and only that one
    saves and returns the token; the others wait, then find the admin there.

    Returns:
        The generated token when this call created the admin with it (to print once), else None.
    """
    with Session(engine) as session:
        exclusive(session.connection())
        if crud.count_namespaces(session):
            return None
        admin = crud.ensure_namespace(session, name=settings.admin_name, is_admin=True)
        token = crud.create_token(session, user=admin, scope="admin", token=settings.admin_token)
        session.commit()
    if settings.admin_token:
        return None
    save_token(token, settings.token_file)
    return token


def render_error(request: Request, exc: PeftHubError) -> JSONResponse:
    """The one rendering of every error: ``{"error": code, "detail": message}``
    on one line, and the same code and message as header-safe ``X-Error-*``."""
    message = without_queries(exc.message)
    headers = {"X-Error-Code": exc.code, "X-Error-Message": header_safe(message)}
    for cls, hf_code in HF_ERROR_CODES.items():
        if isinstance(exc, cls):
            headers["X-Error-Code"] = hf_code
    retry_after = getattr(exc, "retry_after", None)  # 429, and the 503s of a busy or absent dependency
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if request.method == "HEAD":
        return JSONResponse(None, status_code=exc.status_code, headers=headers)
    body = {**exc.to_dict(), "detail": one_line(message, MAX_DETAIL_CHARS)}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The hub as an ASGI app, wired to the database and store in ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        engine = engine_from(settings)
        app.state.engine, app.state.settings = engine, settings
        try:
            await wait_for("database", describe(engine), partial(_migrate, settings), settings.startup_timeout)
            app.state.store = await wait_for("storage", settings.storage, partial(_open_store, settings),
                                             settings.startup_timeout)
            token = await wait_for("database", describe(engine), partial(bootstrap, engine, settings),
                                   settings.startup_timeout)
        except BaseException:
            engine.dispose()
            raise
        app.state.store_limiter = anyio.CapacityLimiter(settings.storage_concurrency)
        app.state.ready_limiter = anyio.CapacityLimiter(4)  # readiness checks never wait for busy threads
        app.state.auth_limiter = AuthLimiter.from_settings(settings)  # fresh counters per app
        await _sweep(app.state.store, settings)
        if token:
            print(  # noqa: T201 - shown once, by design
                f"Created the first admin {settings.admin_name!r}. Its token, shown only now:\n  {token}\n"
                f"Saved to {settings.token_file} for the peft-hub CLI on this machine.",
                flush=True,
            )
        yield
        engine.dispose()

    # No /docs or /redoc: they load scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="peft-hub", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

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
            headers = {"X-Error-Code": code, "X-Error-Message": header_safe(message)}
            body = None if request.method == "HEAD" else {"error": code, "detail": one_line(message, MAX_DETAIL_CHARS)}
            response = JSONResponse(body, status_code=exc.status_code, headers=headers)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    from peft_hub.hub import web
    from peft_hub.hub.routes import adapters, admin, hf, system

    app.include_router(system.router)
    app.include_router(adapters.router)
    app.include_router(hf.router)
    app.include_router(admin.router)
    web.install(app, settings)
    app.add_middleware(BodyClock)
    # Added last, so it is the outermost: limits apply before anything else runs.
    app.add_middleware(RequestLimits)
    return app


class BodyClock:
    """Notes in the request's state when its body bytes last arrived
    (``db.BODY_CLOCK``): a write's deadline counts from there, the moment
    its client starts waiting for the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[BODY_CLOCK] = time.monotonic()

        async def timed_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state[BODY_CLOCK] = time.monotonic()
            return message

        await self.app(scope, timed_receive, send)


# --- start-up ----------------------------------------------------------------


def _migrate(settings: Settings) -> None:
    """Apply migrations on an engine of their own: no statement timeout (a
    migration may rewrite a big table), and a lock wait as long as the start."""
    engine = engine_from(settings, statement_timeout=None, pool_size=1, max_overflow=0,
                         lock_timeout=max(settings.startup_timeout, settings.db_lock_timeout))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _open_store(settings: Settings):  # noqa: ANN202
    return open_store(
        settings.storage, s3_public_url=settings.s3_public_url, endpoint_url=settings.s3_endpoint_url,
        connect_timeout=settings.s3_connect_timeout, read_timeout=settings.s3_read_timeout,
        max_attempts=settings.s3_max_attempts, max_connections=settings.storage_concurrency + 4,  # + readiness
    )


#: What "not up yet" looks like: retried at start. Anything else is a fault of
#: the configuration and stops the start at once.
RETRYABLE: tuple[type[BaseException], ...] = (*UNAVAILABLE, StorageUnavailableError)


def _reason(exc: BaseException) -> str:
    message = unavailable(exc).message if isinstance(exc, UNAVAILABLE) else str(exc)
    return without_queries(one_line(message, 500))


async def wait_for(what: str, where: str, attempt: Callable[[], T], timeout: float) -> T:
    """Run ``attempt`` in a thread until it succeeds, retrying a dependency
    that does not answer yet with exponential backoff (0.5 s, 1 s, 2 s, ...
    10 s) for up to ``timeout`` seconds, and logging each wait.

    Raises:
        The last failure once ``timeout`` has passed (a database's as
        DatabaseUnavailableError), or at once a failure that is not retried.
    """
    deadline, delay = time.monotonic() + timeout, 0.5
    number = 0
    while True:
        number += 1
        try:
            return await anyio.to_thread.run_sync(attempt)
        except RETRYABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("gave up waiting for %s %s after %d attempts in %g s: %s",
                          what, where, number, timeout, _reason(exc))
                if isinstance(exc, UNAVAILABLE):
                    raise unavailable(exc) from exc
                raise
            log.warning("waiting for %s %s (attempt %d): %s", what, where, number, _reason(exc))
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


async def _sweep(store: Any, settings: Settings) -> None:
    """Remove what uploads killed with an earlier hub left in the store."""
    try:
        removed = await anyio.to_thread.run_sync(store.sweep_stale, settings.stale_upload_seconds)
    except Exception as exc:  # noqa: BLE001 - housekeeping never stops a start
        log.warning("could not sweep stale uploads from %s: %s", store.where, _reason(exc))
        return
    if removed:
        log.warning("removed %d unfinished uploads left in %s", removed, store.where)
