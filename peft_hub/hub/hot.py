"""Answering a hot read on the event loop when the caches hold everything it needs.

A read route written as ``work(session, ...)`` runs through :func:`answer`:
first on the event loop against a :class:`CacheOnly` stand-in for the
session, which gives the caches of :mod:`peft_hub.hub.cache` their engine and
raises :class:`NeedsDatabase` at the first thing that would reach the
database; then, on that miss, again from the start in a worker thread with a
real session that commits when ``work`` returns (as ``deps.get_db`` does).

So a warm request takes no thread and no session, a cold one behaves exactly
as the same code with ``SessionDep`` did, and no statement can ever run on
the event loop: the stand-in has none to run. ``work`` must therefore read
through the session only, and do nothing before its first read that it may
not do twice (the principal comes from the dependencies, resolved before).

:func:`send_blob` then answers a resolve with the blob (a 302 to a presigned
URL, or the local file) while holding a storage slot, as ``StoreDep`` did.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from stat import S_ISREG
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from peft_hub.errors import StorageError
from peft_hub.hub import cache
from peft_hub.hub.config import Settings
from peft_hub.hub.db import session_scope, write_deadline
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import storage_slot

T = TypeVar("T")


class NeedsDatabase(BaseException):
    """What :class:`CacheOnly` raises where a real session would run a
    statement. A BaseException, so that no ``except Exception`` in the code it
    runs through can mistake it for a failure and carry on."""


class CacheOnly:
    """A session that holds no connection and runs nothing.

    ``get_bind()`` names the engine, so ``cache.of(session.get_bind())`` finds
    the engine's caches; no row is ever in it (``row in session`` is False);
    any other attribute (``exec``, ``get``, ``add``, ``info``...) raises
    :class:`NeedsDatabase`.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_bind(self, *args: Any, **kwargs: Any) -> Engine:
        return self._engine

    def __contains__(self, row: object) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise NeedsDatabase(name)


class StoreOnLoop:
    """The blob store as seen from the event loop: any use of it (a read, a
    ``stat``, a signature) raises :class:`NeedsDatabase`, so the work reruns
    in a worker thread with the real store, as it does for a statement."""

    def __getattr__(self, name: str) -> Any:
        raise NeedsDatabase(name)


def store_for(session: Any, store: BlobStore) -> Any:
    """``store`` for a real session; for :class:`CacheOnly`, a :class:`StoreOnLoop`."""
    return StoreOnLoop() if isinstance(session, CacheOnly) else store


async def answer(request: Request, work: Callable[..., T], *args: Any, store_slot: bool = False) -> T:
    """``work(session, *args)``: on the event loop from the caches alone, else
    in a worker thread with the request's session (committed when it returns,
    rolled back when it raises), and, with ``store_slot``, while holding a
    storage slot (``uploads.storage_slot``), for work that may read the store.

    Both runs share one set of refresh claims (``cache.claiming``): an entry
    near its expiry that the run on the loop chose to reload ahead (so it
    missed) is reloaded by the run in the thread too, not taken as valid.

    A burst of requests that miss the same expired entry takes one thread:
    the first loads it, and the others wait on the loop for that load
    (``HubCache.wait_for_load``, at most ``cache.LOAD_WAIT``) and run again
    from the caches; one that still misses takes a thread of its own.
    """
    claims: cache.Claims = set()
    engine = request.app.state.engine
    hub_cache, missed = cache.of(engine), cache.Misses()
    for first in (True, False):
        try:
            with cache.claiming(claims), cache.noting_misses(missed):
                return work(CacheOnly(engine), *args)
        except NeedsDatabase:
            pass
        # What this run missed, another request may be loading already: then wait for it, and run
        # again from the caches (once), rather than take a thread of our own to read the same rows.
        if not (first and await hub_cache.wait_for_load(missed)):
            break
        missed = cache.Misses()
    async with hub_cache.loading(missed):
        if not store_slot:
            return await run_in_threadpool(in_session, request, work, *args, claims=claims)
        async with storage_slot(request.app.state):
            return await run_in_threadpool(in_session, request, work, *args, claims=claims)


def in_session(request: Request, work: Callable[..., T], *args: Any, claims: cache.Claims | None = None) -> T:
    """``work(session, *args)`` in a session that commits when it returns
    (with the refresh ``claims`` of an earlier run of it, if any)."""
    with cache.claiming(set() if claims is None else claims), \
            contextmanager(session_scope)(request.app.state.engine, write_deadline(request)) as session:
        return work(session, *args)


# --- sending a blob -----------------------------------------------------------


async def send_blob(
    request: Request, settings: Settings, sha256: str, filename: str, headers: dict[str, str],
    *, private: bool, pinned: bool,
) -> Response:
    """:func:`blob_response` while holding a storage slot (``uploads.storage_slot``),
    as ``StoreDep`` holds one: on the event loop when it is a presigned URL
    the store reuses or a local file's ``stat``, else (signing, which may
    fetch credentials; a store that can only stream) in a worker thread."""
    state = request.app.state
    store = state.store
    async with storage_slot(state):
        if _quick(store, sha256, filename, settings.presign_expiry):
            return blob_response(store, settings, sha256, filename, headers, request=request, private=private,
                                 pinned=pinned)
        return await run_in_threadpool(blob_response, store, settings, sha256, filename, headers,
                                       request=request, private=private, pinned=pinned)


def _quick(store: BlobStore, sha256: str, filename: str, expires: int) -> bool:
    """Whether :func:`blob_response` needs no I/O but a local ``stat`` here."""
    reused = getattr(store, "reused_get", None)
    if reused is not None:
        return reused(sha256, filename, expires) is not None
    return type(store).presign_get is BlobStore.presign_get and type(store).local_path is not BlobStore.local_path


def blob_response(
    store: BlobStore, settings: Settings, sha256: str, filename: str, headers: dict[str, str],
    *, request: Request | None = None, private: bool = True, pinned: bool = False,
) -> Response:
    """Send a blob: 302 to a presigned URL where the store has one, else the file.

    With ``request``, a matching ``If-None-Match`` gets a 304 (the caller has
    checked read access already), and ``Cache-Control`` is set: ``immutable``
    only for bytes served here at a full revision id (a redirect's URL expires).
    """
    url = store.presign_get(sha256, filename, settings.presign_expiry)
    if request is not None:
        headers = {**headers, "Cache-Control": cache.cache_control(private, immutable=pinned and url is None)}
        if cache.not_modified(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
    if url is not None:
        return RedirectResponse(url, status_code=302, headers=headers)
    local_path = store.local_path(sha256)
    if local_path is not None:  # FileResponse handles Range and HEAD
        try:
            stat = os.stat(local_path)
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            raise StorageError(f"{filename}: its blob {sha256} is missing from the hub's store; "
                               "an admin can find every such file with `peft-hub fsck`")
        return FileResponse(local_path, headers=headers, media_type="application/octet-stream",
                            filename=filename, content_disposition_type="attachment", stat_result=stat)
    return StreamingResponse(store.open(sha256), headers=headers, media_type="application/octet-stream")
