"""Build the FastAPI app from settings: database, blob store, first admin,
routes, and the one handler that renders every error.

At start the hub waits, with exponential backoff and for at most
``startup_timeout`` seconds, for a database or store that does not answer
yet, saying what it waits for. Later failures of either are 503s (or 502s)
that name the dependency, never bare 500s.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI
from sqlmodel import Session

from peft_hub import __version__
from peft_hub.errors import StorageUnavailableError
from peft_hub.hub import cache, crud, errors_http
from peft_hub.hub.config import Settings
from peft_hub.hub.db import BODY_CLOCK, UNAVAILABLE, describe, engine_from, unavailable
from peft_hub.hub.errors_http import header_safe, render_error, without_queries  # noqa: F401 - their old home
from peft_hub.hub.limits import RequestLimits
from peft_hub.hub.migrations import exclusive, upgrade
from peft_hub.hub.ratelimit import AuthLimiter
from peft_hub.hub.storage import open_store
from peft_hub.hub.webhooks import DeliveryWorker
from peft_hub.paths import save_token
from peft_hub.safeparse import one_line

log = logging.getLogger("peft_hub.hub")

T = TypeVar("T")


def bootstrap(engine, settings: Settings) -> str | None:
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


def say_token(settings: Settings, token: str) -> None:
    """Print the first admin's token: shown once, by design."""
    print(f"Created the first admin {settings.admin_name!r}. Its token, shown only now:\n  {token}\n"
          f"Saved to {settings.token_file} for the peft-hub CLI on this machine.", flush=True)


async def prepare_database(settings: Settings) -> str | None:
    """Migrate and bootstrap as a start does, waiting for the database:
    what ``serve --workers`` runs once before its workers start.

    Returns:
        The first admin's generated token when this call created it, else None.
    """
    engine = engine_from(settings)
    try:
        await wait_for("database", describe(engine), partial(_migrate, settings), settings.startup_timeout)
        return await wait_for("database", describe(engine), partial(bootstrap, engine, settings),
                              settings.startup_timeout)
    finally:
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The hub as an ASGI app, wired to the database and store in ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = engine_from(settings)
        cache.watch(engine, settings.cache_ttl)  # before any write, so every one is seen
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
        from peft_hub.hub import upstream  # the pull-through mirror, when PEFT_HUB_UPSTREAM is set

        upstream.attach(engine, app.state.store, settings, state=app.state)  # fetches take its storage slots
        app.state.store_limiter = anyio.CapacityLimiter(settings.storage_concurrency)
        app.state.ready_limiter = anyio.CapacityLimiter(4)  # readiness checks never wait for busy threads
        app.state.auth_limiter = AuthLimiter.from_settings(settings)  # fresh counters per app
        await _sweep(app.state.store, settings)
        app.state.webhooks = DeliveryWorker(engine, settings)
        app.state.webhooks.start()
        if token:
            say_token(settings, token)
        _freeze_heap()
        yield
        await app.state.webhooks.stop()
        engine.dispose()

    # No /docs or /redoc: they load scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="peft-hub", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    errors_http.install(app, settings)

    from peft_hub.hub import dispatch, web
    from peft_hub.hub.hf import read as hf_read
    from peft_hub.hub.routes import adapters, admin, events, facets, hf, system

    app.include_router(system.router)
    app.include_router(adapters.router)
    app.include_router(hf.router)
    app.include_router(admin.router)
    app.include_router(events.router)
    app.include_router(facets.router)
    web.install(app, settings)
    # The HF resolve routes without trying the ~70 before them, where that picks the same route (hub.dispatch).
    dispatch.install(app, {"GET": hf_read.resolve_get, "HEAD": hf_read.resolve_head})
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

_frozen = False


def _freeze_heap() -> None:
    """Once per process, after the first start: move what start-up made
    (modules, the engine, the routes) out of the cyclic collector's reach,
    so its full passes stop scanning them. Those passes were the hub's p99
    (about 140 ms against 60 ms under 32 concurrent resolves)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def _migrate(settings: Settings) -> None:
    """Apply migrations on an engine of their own: no statement timeout (a
    migration may rewrite a big table), and a lock wait as long as the start."""
    engine = engine_from(settings, statement_timeout=None, pool_size=1, max_overflow=0,
                         lock_timeout=max(settings.startup_timeout, settings.db_lock_timeout))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _open_store(settings: Settings):
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
    except Exception as exc:  # housekeeping never stops a start
        log.warning("could not sweep stale uploads from %s: %s", store.where, _reason(exc))
        return
    if removed:
        log.warning("removed %d unfinished uploads left in %s", removed, store.where)
