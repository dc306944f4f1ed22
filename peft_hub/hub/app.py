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

from peft_hub import __version__
from peft_hub.errors import (
    AdapterNotFoundError, ConflictError, EntryNotFoundError, InvalidInputError, PeftHubError, RevisionNotFoundError,
)
from peft_hub.hub import crud
from peft_hub.hub.config import Settings
from peft_hub.hub.db import make_engine
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.storage import open_store
from peft_hub.paths import save_token

log = logging.getLogger("peft_hub.hub")

#: Hugging Face clients read X-Error-Code to raise their own exception types.
HF_ERROR_CODES = {
    AdapterNotFoundError: "RepoNotFound",
    RevisionNotFoundError: "RevisionNotFound",
    EntryNotFoundError: "EntryNotFound",
}


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
    headers = {"X-Error-Code": exc.code, "X-Error-Message": exc.message[:500].encode("ascii", "replace").decode()}
    for cls, hf_code in HF_ERROR_CODES.items():
        if isinstance(exc, cls):
            headers["X-Error-Code"] = hf_code
    if request.method == "HEAD":
        return JSONResponse(None, status_code=exc.status_code, headers=headers)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The hub as an ASGI app, wired to the database and store in ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        engine = make_engine(settings.db_url)
        upgrade(engine)
        app.state.engine, app.state.settings = engine, settings
        app.state.store = open_store(settings.storage, s3_public_url=settings.s3_public_url)
        token = bootstrap(engine, settings)
        if token:
            print(  # noqa: T201 - shown once, by design
                f"Created the first admin {settings.admin_name!r}. Its token, shown only now:\n  {token}\n"
                f"Saved to {settings.token_file} for the peft-hub CLI on this machine.",
                flush=True,
            )
        yield
        engine.dispose()

    app = FastAPI(title="peft-hub", version=__version__, lifespan=lifespan)

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
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return render_error(request, InvalidInputError("; ".join(parts)))

    from peft_hub.hub import web
    from peft_hub.hub.routes import adapters, hf, system

    app.include_router(system.router)
    app.include_router(adapters.router)
    app.include_router(hf.router)
    web.install(app, settings)
    return app
