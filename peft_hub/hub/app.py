"""Build the FastAPI app from settings: database, blob store, first admin,
routes, and the one handler that renders every error."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from peft_hub import __version__
from peft_hub.errors import (
    AdapterNotFoundError, AuthenticationError, ConflictError, EntryNotFoundError, InvalidInputError, NotFoundError,
    PayloadTooLargeError, PeftHubError, PermissionDeniedError, RateLimitedError, RevisionNotFoundError,
)
from peft_hub.hub import crud
from peft_hub.hub.config import Settings
from peft_hub.hub.db import make_engine
from peft_hub.hub.limits import RequestLimits
from peft_hub.hub.migrations import upgrade
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


def header_safe(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` as a header value: printable ASCII on one line (others escaped), at most ``limit`` characters."""
    flat = one_line(text.encode("ascii", "backslashreplace").decode("ascii"), len(text) * 10 + 10)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def bootstrap(engine, settings: Settings) -> str | None:  # noqa: ANN001
    """On an empty database, create the first admin and its token.

    Returns:
        The generated token when one was generated (to print once), else None.
    """
    with Session(engine) as session:
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
    headers = {"X-Error-Code": exc.code, "X-Error-Message": header_safe(exc.message)}
    for cls, hf_code in HF_ERROR_CODES.items():
        if isinstance(exc, cls):
            headers["X-Error-Code"] = hf_code
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after)
    if request.method == "HEAD":
        return JSONResponse(None, status_code=exc.status_code, headers=headers)
    body = {**exc.to_dict(), "detail": one_line(exc.message, MAX_DETAIL_CHARS)}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The hub as an ASGI app, wired to the database and store in ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        engine = make_engine(settings.db_url)
        upgrade(engine)
        app.state.engine, app.state.settings = engine, settings
        app.state.store = open_store(settings.storage, s3_public_url=settings.s3_public_url)
        app.state.auth_limiter = AuthLimiter.from_settings(settings)  # fresh counters per app
        token = bootstrap(engine, settings)
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
    from peft_hub.hub.routes import adapters, hf, system

    app.include_router(system.router)
    app.include_router(adapters.router)
    app.include_router(hf.router)
    web.install(app, settings)
    # Added last, so it is the outermost: limits apply before anything else runs.
    app.add_middleware(RequestLimits)
    return app
