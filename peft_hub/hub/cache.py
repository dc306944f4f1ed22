"""In-process caches for the hot read paths, and the hook that keeps them right.

Two kinds, one :class:`HubCache` per engine (so per app, so per replica):

- **fixed**: a bounded LRU for what a revision can never change (its file
  list), keyed by the revision's id *and* sha. A deleted revision's id may be
  reused by SQLite, but never with the same sha, so nothing here is ever
  invalidated: it cannot go stale.
- **fresh**: a short-TTL map (``PEFT_HUB_CACHE_TTL`` seconds, default 2, 0
  disables) for what writes change: token -> principal, and ``owner/name`` ->
  the adapter row with its tags. Each entry also carries the generation it
  was read at; a committed write in this process to a table it came from
  bumps that generation (:func:`watch`), so this process sees its own writes
  on the next request. Another replica sees them within the TTL.

A cache never decides who may read: callers run the permission checks on the
cached rows each request, and a token's expiry is checked at use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

#: Tables whose writes make cached principals stale, and those for repos.
AUTH_TABLES = frozenset({"token", "namespace", "membership", "websession"})
REPO_TABLES = frozenset({"adapter", "tag", "revision"})
#: A write statement and the table it writes, ORM or Core or text alike.
_WRITE = re.compile(r'\s*(?:insert\s+(?:or\s+\w+\s+)?into|update|delete\s+from)\s+"?(\w+)', re.IGNORECASE)
_DIRTY, _PENDING = "peft_hub.cache.dirty", "peft_hub.cache.pending"
T = TypeVar("T")

FIXED_ITEMS = 4096
FRESH_ITEMS = 8192
#: Rendered answers kept per process (``views.answer_of``), and the largest body kept: at most 64 MiB.
ANSWER_ITEMS = 1024
ANSWER_BYTES = 64 << 10
#: The last part of an entry's life in which one lookup reloads it ahead of expiry.
REFRESH_AHEAD = 0.25
#: An entry lives ``ttl`` less up to this part of it, at random.
JITTER = 0.1
#: The longest a worker thread waits for another's load of the same key.
LOAD_WAIT = 1.0


class RecentItems:
    """A thread-safe mapping that keeps its ``size`` most recently used items."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class _Entry:
    """A fresh value, until ``expires``; from ``refresh_at`` on, one lookup
    (the one that claims it, until ``claimed``) reloads it while the others keep it."""

    __slots__ = ("expires", "refresh_at", "generation", "value", "claimed")

    def __init__(self, now: float, life: float, generation: int, value: Any) -> None:
        self.expires, self.refresh_at = now + life, now + life * (1 - REFRESH_AHEAD)
        self.generation, self.value, self.claimed = generation, value, float("-inf")


class HubCache:
    """The caches of one engine; thread-safe."""

    def __init__(self, ttl: float = 2.0, fixed_items: int = FIXED_ITEMS, fresh_items: int = FRESH_ITEMS) -> None:
        self.ttl = ttl
        self.generations = {"auth": 0, "repo": 0}
        self._fixed = RecentItems(fixed_items)
        self._answers = RecentItems(ANSWER_ITEMS)
        self._fresh: OrderedDict[tuple[str, Hashable], _Entry] = OrderedDict()
        self._fresh_items = fresh_items
        #: Loads under way: key -> (the loading thread, set when it is done).
        self._flights: dict[tuple[str, Hashable], tuple[int, threading.Event]] = {}
        #: Loads that a request on an event loop sent to a worker thread: key -> done when it returns.
        self._loop_flights: dict[tuple[str, Hashable], asyncio.Future[None]] = {}
        self._lock = threading.Lock()

    # --- fixed: immutable data ------------------------------------------------

    def fixed(self, key: Hashable) -> Any | None:
        return self._fixed.get(key)

    def keep(self, key: Hashable, value: Any) -> None:
        self._fixed.put(key, value)

    # --- answers rendered from a fresh entry (views.answer_of) ------------------

    def answer(self, source: Any, key: Hashable) -> Rendered | None:
        """What :meth:`keep_answer` kept for ``key`` made from ``source`` (that very object), else None."""
        kept = self._answers.get((id(source), key))
        return kept[1] if kept is not None and kept[0] is source else None

    def keep_answer(self, source: Any, key: Hashable, rendered: Rendered) -> None:
        """Keep ``rendered`` while ``source`` is the entry it was made from (it holds ``source``
        alive meanwhile, so its id cannot be reused); bodies past :data:`ANSWER_BYTES` are not kept,
        and nothing is with the caches off (``ttl`` 0: every entry is a fresh read, never seen again)."""
        if self.ttl > 0 and len(rendered[0]) <= ANSWER_BYTES:
            self._answers.put((id(source), key), (source, rendered))

    # --- fresh: short-lived, invalidated by writes ------------------------------

    def generation(self, kind: str) -> int:
        """Read before the query whose result is put with :meth:`put`: a write
        committed meanwhile then makes that result stale at once."""
        return self.generations[kind]

    def get(self, kind: str, key: Hashable) -> Any | None:
        """The value, or None: absent, stale, past its TTL, or this lookup is
        the one to reload it ahead of its expiry (then call :meth:`load`)."""
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._fresh.get((kind, key))
            now = time.monotonic()
            if entry is not None and (entry.generation != self.generations[kind] or now >= entry.expires):
                del self._fresh[(kind, key)]
                entry = None
            if entry is None:
                missed = _misses.get()
                if missed is not None:
                    missed.append((kind, key))
                return None
            if now < entry.refresh_at:
                return entry.value
            claims = _claims.get()
            if now < entry.claimed:  # another request reloads it, or this one again
                return None if claims is not None and (kind, key) in claims else entry.value
            entry.claimed = now + (entry.expires - now) / 2  # then lapses: that request failed
            if claims is not None:
                claims.add((kind, key))
            return None

    def put(self, kind: str, key: Hashable, value: Any, generation: int) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self.generations[kind]:
                return  # a write landed while it was read
            life = self.ttl * (1 - JITTER * random.random())  # keys read together expire apart
            self._fresh[(kind, key)] = _Entry(time.monotonic(), life, generation, value)
            self._fresh.move_to_end((kind, key))
            while len(self._fresh) > self._fresh_items:
                self._fresh.popitem(last=False)

    def load(self, kind: str, key: Hashable, read: Callable[[], T]) -> T:
        """``read()``, put under the generation before it; after a miss of :meth:`get`.

        Single-flight in worker threads: while another thread loads the same
        key, wait for it (at most ``LOAD_WAIT`` seconds) and take what it put;
        if it put nothing (it failed, or a write made it stale), read too. On
        an event loop it never waits (``read`` then meets the ``CacheOnly``
        session of :mod:`peft_hub.hub.hot` and gives up at once).
        """
        if self.ttl <= 0 or _on_event_loop():
            return self._read_and_put(kind, key, read)
        me, full_key = threading.get_ident(), (kind, key)
        with self._lock:
            flight = self._flights.get(full_key)
            if flight is None:
                self._flights[full_key] = (me, threading.Event())
        if flight is None:
            try:
                return self._read_and_put(kind, key, read)
            finally:
                with self._lock:
                    _, done = self._flights.pop(full_key)
                done.set()
        if flight[0] != me:  # not a load re-entered by its own thread
            flight[1].wait(LOAD_WAIT)
            with self._lock:
                entry = self._fresh.get(full_key)
                now = time.monotonic()
                if entry is not None and entry.generation == self.generations[kind] and now < entry.refresh_at:
                    return entry.value
        return self._read_and_put(kind, key, read)

    # --- on the event loop: one worker thread per missing key ---------------------

    async def wait_for_load(self, missed: Misses) -> bool:
        """Whether another request on this event loop is loading one of ``missed`` (keys
        :func:`noting_misses` noted) in a worker thread; if so, wait for it, at most
        :data:`LOAD_WAIT` seconds, so that this request can be answered from what it put."""
        loop = asyncio.get_running_loop()
        flight = next((f for f in map(self._loop_flights.get, missed)
                       if f is not None and not f.done() and f.get_loop() is loop), None)
        if flight is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(flight), LOAD_WAIT)
        return True

    @contextlib.asynccontextmanager
    async def loading(self, missed: Misses) -> AsyncIterator[None]:
        """Around a worker thread's run that loads ``missed``: other requests on this event loop
        that miss them wait for it (:meth:`wait_for_load`) instead of each taking a thread."""
        loop = asyncio.get_running_loop()
        mine = []
        for key in missed:
            if key not in self._loop_flights or self._loop_flights[key].done():
                self._loop_flights[key] = flight = loop.create_future()
                mine.append((key, flight))
        try:
            yield
        finally:
            for key, flight in mine:
                if self._loop_flights.get(key) is flight:
                    del self._loop_flights[key]
                flight.set_result(None)

    def _read_and_put(self, kind: str, key: Hashable, read: Callable[[], T]) -> T:
        generation = self.generation(kind)
        value = read()
        self.put(kind, key, value, generation)
        return value

    def bump(self, kinds: set[str]) -> None:
        """Make every fresh entry of ``kinds`` stale (a write to them committed)."""
        with self._lock:
            for kind in kinds:
                self.generations[kind] += 1
            stale = [key for key in self._fresh if key[0] in kinds]
            for key in stale:
                del self._fresh[key]


#: The keys whose refresh one request claimed (see :func:`claiming`).
Claims = set[tuple[str, Hashable]]
_claims: ContextVar[Claims | None] = ContextVar("peft_hub_cache_claims", default=None)


@contextmanager
def claiming(claims: Claims) -> Iterator[None]:
    """Run lookups on behalf of one request whose work may look up twice
    (on the event loop, then again in a worker thread): a refresh that the
    first lookup claimed is noted in ``claims``, so that the second, in a
    block given the same set, misses too and reloads it, where another
    request's lookup keeps the still-valid value."""
    token = _claims.set(claims)
    try:
        yield
    finally:
        _claims.reset(token)


#: The keys that lookups found missing or stale (see :func:`noting_misses`).
Misses = list[tuple[str, Hashable]]
_misses: ContextVar[Misses | None] = ContextVar("peft_hub_cache_misses", default=None)


@contextmanager
def noting_misses(missed: Misses) -> Iterator[None]:
    """Note in ``missed`` each key a lookup in the block finds missing or stale (not one it
    merely claims to refresh ahead: the others still have that), for :meth:`HubCache.wait_for_load`."""
    token = _misses.set(missed)
    try:
        yield
    finally:
        _misses.reset(token)


def _on_event_loop() -> bool:
    return asyncio._get_running_loop() is not None


_caches: weakref.WeakKeyDictionary[Engine, HubCache] = weakref.WeakKeyDictionary()
#: Engines not watched (a maintenance script's) get this: nothing fresh is kept.
_OFF = HubCache(ttl=0, fixed_items=0)


def of(bind: Any) -> HubCache:
    """The cache of a session's or connection's engine (an off one if not watched)."""
    engine = getattr(bind, "engine", bind)
    return _caches.get(engine, _OFF)


def kinds_written(statement: str) -> set[str]:
    """Which caches a SQL statement makes stale (empty for reads)."""
    match = _WRITE.match(statement)
    if match is None:
        return set()
    table = match.group(1).lower()
    return {"auth"} if table in AUTH_TABLES else {"repo"} if table in REPO_TABLES else set()


def watch(engine: Engine, ttl: float) -> HubCache:
    """Give ``engine`` a cache, kept right by events on every connection.

    A write (an ORM flush, a Core ``update()``/``delete()``, text SQL) marks
    its connection; the commit bumps the generations it touched, and so does
    the connection's return to the pool, which comes after the commit has
    landed: a reader that ran its query in between stored its result under
    the generation before the second bump, so that result is dropped. A
    rollback forgets the marks.
    """
    cache = _caches.get(engine)
    if cache is not None:
        cache.ttl = ttl
        return cache
    cache = _caches[engine] = HubCache(ttl)

    @event.listens_for(engine, "after_cursor_execute")
    def _noted(conn, cursor, statement, parameters, context, executemany) -> None:
        kinds = kinds_written(statement)
        if kinds:
            conn.info.setdefault(_DIRTY, set()).update(kinds)

    @event.listens_for(engine, "commit")
    def _committing(conn) -> None:
        kinds = conn.info.pop(_DIRTY, None)
        if kinds:
            cache.bump(kinds)
            conn.info.setdefault(_PENDING, set()).update(kinds)

    @event.listens_for(engine, "rollback")
    def _rolled_back(conn) -> None:
        conn.info.pop(_DIRTY, None)

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_conn, record) -> None:
        kinds = record.info.pop(_PENDING, None)
        if kinds:
            cache.bump(kinds)

    return cache


# --- HTTP validators: ETag, If-None-Match, Cache-Control ----------------------


def cache_control(private: bool, *, immutable: bool = False) -> str:
    """``Cache-Control`` for a repo's answer: ``private`` for a private repo
    (no shared cache may keep it), ``immutable`` only for what a full revision
    id pins; anything else is revalidated on each use (``no-cache``)."""
    scope = "private" if private else "public"
    return f"{scope}, max-age=31536000, immutable" if immutable else f"{scope}, no-cache"


def not_modified(request: Any, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks).
    Call it only after the permission check: a 304 says the repo exists."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(",")[:64])


#: A JSON answer as it is sent: its body and its strong ETag (the body's digest).
Rendered = tuple[bytes, str]


def render(content: Any) -> Rendered:
    """``content`` as the JSON body FastAPI would send (Starlette's ``JSONResponse.render``), and its ETag."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    return body, f'"{hashlib.sha1(body).hexdigest()}"'


def json_answer(request: Any, content: Any, *, private: bool, immutable: bool = False) -> Any:
    """``content`` as the JSON FastAPI would send, with a strong ETag (the
    body's digest), ``Cache-Control``, and a 304 when the client holds it."""
    return rendered_answer(request, render(content), private=private, immutable=immutable)


def rendered_answer(request: Any, rendered: Rendered, *, private: bool, immutable: bool = False) -> Any:
    """:func:`json_answer` of what :func:`render` made (rendered once, sent as often as asked)."""
    from fastapi.responses import Response

    body, etag = rendered
    headers = {"ETag": etag, "Cache-Control": cache_control(private, immutable=immutable)}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
