"""FastAPI dependencies: the session, the store, the settings and the caller.

The caller comes from ``Authorization: Bearer`` (checked behind the failed-
attempt limits of :mod:`peft_hub.hub.ratelimit`), or, for reads only, from the
web session cookie, which holds a random id of a server-side ``WebSession``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from peft_hub.errors import AuthenticationError
from peft_hub.hub import audit, cache, crud
from peft_hub.hub.auth import Principal, authenticate, cached_principal, lookup_of, principal_for
from peft_hub.hub.config import Settings
from peft_hub.hub.db import session_scope, write_deadline
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import storage_slot

#: The web session cookie: a random id, never the token.
SESSION_COOKIE = "peft_hub_session"
#: The cookie authenticates these methods only; a change needs the token in a header.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_db(request: Request) -> Iterator[Session]:
    """The request's session. It takes a connection only at its first query,
    so a route that streams a body first holds none meanwhile; it commits
    when the route returns, within the write deadline."""
    yield from session_scope(request.app.state.engine, write_deadline(request))


@contextmanager
def short_session(request: Request) -> Iterator[Session]:
    """A session of its own, committed and closed when the block ends: for
    authentication and the checks before a long body or a blob's hashing, so
    they never hold a connection (or a transaction) for the length of a request.
    Never open one while the request's own session holds a connection."""
    with Session(request.app.state.engine, expire_on_commit=False, info={"short": True}) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def get_store(request: Request) -> AsyncIterator[BlobStore]:
    """The store, while the route holds a storage slot (see ``uploads.storage_slot``)."""
    async with storage_slot(request.app.state):
        yield request.app.state.store


async def get_settings(request: Request) -> Settings:  # async: no thread for an attribute
    return request.app.state.settings


async def client_address(request: Request) -> str:
    """:func:`peer_address` as a dependency (async: it needs no thread)."""
    return peer_address(request)


def peer_address(request: Request) -> str:
    """The peer's address, which rate limits and audit events are keyed by."""
    return request.client.host if request.client else ""


def bearer_token(request: Request) -> str | None:
    """The token from ``Authorization: Bearer``, if any. Two Authorization
    headers are refused: a proxy in front may have checked the other one."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        raise AuthenticationError("send one Authorization header, not several")
    header = headers[0] if headers else ""
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def authenticate_request(request: Request, session: Session, token: str) -> Principal:
    """``auth.authenticate`` behind the failed-attempt limits.

    A client address or token lookup over its limit gets RateLimitedError
    (429) before the token is even checked; a failure that fills a limit is
    written to the audit log at once, in its own transaction, since this
    request's session will be rolled back.
    """
    limiter = request.app.state.auth_limiter
    address, lookup = peer_address(request), lookup_of(token)
    limiter.check(address=address, lookup=lookup)
    try:
        return authenticate(session, token)
    except AuthenticationError:
        for kind, key in limiter.failed(address=address, lookup=lookup):
            audit.record_now(
                request.app.state.engine, actor="", action="auth.failed_burst", target=f"{kind}:{key}", client=address,
                detail={"kind": kind, "failures": limiter.limit_of(kind), "window_seconds": limiter.window_seconds,
                        "path": request.url.path[:200]},
            )
        raise


def cookie_principal(request: Request, session: Session) -> Principal | None:
    """The signed-in browser's principal, for safe methods only.

    Also leaves the signed-in user's name and the session's CSRF token in
    ``request.scope["session"]`` for the page renderer.
    """
    if request.method not in SAFE_METHODS:
        return None
    found = crud.resolve_web_session(session, raw_id=request.cookies.get(SESSION_COOKIE, ""))
    if found is None:
        return None
    web, token = found
    principal = principal_for(session, token)
    request.scope["session"] = {"user": principal.user.name, "csrf": web.csrf}
    return principal


# scope="function": the session commits when the route returns, before the
# response is sent, so a client never sees a 201 for data not yet committed.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def get_principal(request: Request, session: Session) -> Principal | None:
    """The caller from a bearer token, else from the session cookie (reads only)."""
    token = bearer_token(request)
    if token:
        return authenticate_request(request, session, token)
    return cookie_principal(request, session)


def fast_principal(request: Request, token: str | None) -> Principal | None:
    """The bearer token's principal from this process's cache, after the
    failed-attempt limits (as :func:`authenticate_request` checks them); None
    when it must be read. Runs no statement: it is called on the event loop."""
    if not token:
        return None
    request.app.state.auth_limiter.check(address=peer_address(request), lookup=lookup_of(token))
    return cached_principal(request.app.state.engine, token)


async def request_principal(request: Request) -> Principal | None:
    """:func:`get_principal` in a short session, closed before the route runs
    (and before its body is read), in a worker thread unless the cache
    answers or the caller is anonymous (:func:`principal_on_loop`). The
    principal's rows are detached: their columns stay readable, and writes
    name them by id."""
    return await principal_on_loop(request, bearer_token(request), _read_principal)


def anonymous(request: Request, token: str | None) -> bool:
    """No bearer token, and no session cookie on a safe method: no one, as
    :func:`get_principal` would find without running a statement."""
    return not token and not (request.method in SAFE_METHODS and request.cookies.get(SESSION_COOKIE))


async def principal_on_loop(
    request: Request, token: str | None, read: Callable[[Request, cache.Claims], Principal | None],
) -> Principal | None:
    """The caller with ``token``: None when :func:`anonymous`, else from the
    cache on the event loop (:func:`fast_principal`), else ``read(request,
    claims)`` in a worker thread. Requests that miss the same token's entry
    at once take one thread: the others wait for its load on the loop
    (``HubCache.wait_for_load``) and look again."""
    if anonymous(request, token):
        return None
    claims: cache.Claims = set()  # a refresh the lookup on the loop claims is reloaded by the thread's
    hub_cache, missed = cache.of(request.app.state.engine), cache.Misses()
    with cache.claiming(claims), cache.noting_misses(missed):
        principal = fast_principal(request, token)
    if principal is None and await hub_cache.wait_for_load(missed):  # another request reads this token's rows
        with cache.claiming(claims):
            principal = fast_principal(request, token)
    if principal is not None:
        return principal
    async with hub_cache.loading(missed):
        return await run_in_threadpool(read, request, claims)


def _read_principal(request: Request, claims: cache.Claims) -> Principal | None:
    with cache.claiming(claims), short_session(request) as session:
        return get_principal(request, session)


StoreDep = Annotated[BlobStore, Depends(get_store, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal | None, Depends(request_principal)]
ClientDep = Annotated[str, Depends(client_address)]
