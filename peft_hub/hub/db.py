"""Engine, sessions and schema upgrades.

The engine is built from settings by :func:`make_engine` inside
``create_app``, so tests can point an app at any database. A request's session
commits when the route returns and rolls back when it raises.

Every wait on the database is bounded: connecting, each lock
(``lock_timeout``), each statement (``statement_timeout``), a free pooled
connection, and a write's whole run (:class:`WriteDeadline`). A failure of
any of them is a 503 that names the database (:func:`unavailable`), never a
500 or a request that hangs.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Session, create_engine

from peft_hub.errors import DatabaseUnavailableError, UnavailableError
from peft_hub.hub import models  # noqa: F401 - registers the tables

#: Database failures that mean "down or busy, retry", not "a bug".
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
#: SQLSTATEs of PostgreSQL's own timeouts.
_LOCK_TIMEOUT, _STATEMENT_TIMEOUT = "55P03", "57014"
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def make_engine(
    url: str,
    *,
    connect_timeout: float = 10.0,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout: float = 30.0,
    sqlite_mmap_bytes: int = 1024**3,
    pg_random_page_cost: float = 1.1,
) -> Engine:
    """Create the engine for ``url``; SQLite gets WAL and foreign keys.

    The defaults suit maintenance (``db upgrade``: no lock or statement
    limit); the hub builds its engine with :func:`engine_from` and its settings.

    Args:
        connect_timeout: seconds to open a connection.
        lock_timeout: seconds a statement waits for a lock (None: forever);
            SQLite's busy timeout.
        statement_timeout: seconds a statement may run (None: no limit); PostgreSQL only.
        pool_size, max_overflow, pool_timeout: the connection pool, and how
            long a request waits for a free connection.
        sqlite_mmap_bytes: SQLite's ``mmap_size`` for each connection (0: none).
        pg_random_page_cost: PostgreSQL's ``random_page_cost`` for each session (0: the server's).
    """
    pool = {"pool_pre_ping": True, "pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        busy = 30.0 if lock_timeout is None else lock_timeout
        if path in ("", ":memory:"):
            pool = {}  # a single shared connection: no pool to size
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy}, **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA mmap_size={int(sqlite_mmap_bytes)}")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # libpq counts whole seconds (and treats 1 as 2); tcp_user_timeout bounds
    # a write to a server that vanished without closing the connection.
    seconds = max(2, math.ceil(connect_timeout))
    connect_args = {"connect_timeout": seconds, "tcp_user_timeout": seconds * 1000}
    engine = create_engine(url, connect_args=connect_args, **pool)
    settings = {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout}

    @event.listens_for(engine, "connect")
    def _timeouts(dbapi_conn, _record) -> None:
        # SET per session, not the ``options`` startup parameter, which
        # poolers such as PgBouncer refuse.
        with dbapi_conn.cursor() as cur:
            for name, value in settings.items():
                cur.execute(f"SET {name} = {0 if value is None else max(1, int(value * 1000))}")
            # psycopg prepares a statement run 5 times, and after 5 more PostgreSQL may keep one generic
            # plan for it, made without the parameters' values: a search's LIKE pattern then no longer
            # picks its trigram indexes (1.4 ms became 10-18 ms from the 21st run of one query). Every
            # statement is planned for its values instead (PostgreSQL 12 and later).
            cur.execute("SET plan_cache_mode = force_custom_plan")
            if pg_random_page_cost:  # pages come from memory or SSD (Settings.pg_random_page_cost)
                cur.execute(f"SET random_page_cost = {float(pg_random_page_cost)!r}")
        dbapi_conn.commit()

    return engine


def engine_from(settings: Any, **overrides: Any) -> Engine:
    """:func:`make_engine` with the bounds from the hub's settings (and ``overrides``)."""
    options = {
        "connect_timeout": settings.db_connect_timeout, "lock_timeout": settings.db_lock_timeout,
        "statement_timeout": settings.db_statement_timeout, "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow, "pool_timeout": settings.db_pool_timeout,
        "sqlite_mmap_bytes": settings.sqlite_mmap_bytes, "pg_random_page_cost": settings.pg_random_page_cost,
    }
    return make_engine(settings.db_url, **{**options, **overrides})


def describe(engine: Engine) -> str:
    """The database's URL without its password, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)


def unavailable(exc: BaseException) -> DatabaseUnavailableError:
    """The 503 for a database that is down or busy, saying which it was.

    Covers a refused or lost connection, PostgreSQL's lock and statement
    timeouts, SQLite's "database is locked" and an exhausted pool. The
    transaction was rolled back, so nothing it did was kept.
    """
    orig = getattr(exc, "orig", None)
    reason = _BACKGROUND.sub("", str(orig if orig is not None else exc)).strip()
    reason = " ".join(reason.split())[:500] or type(exc).__name__
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(exc, PoolTimeoutError):
        return DatabaseUnavailableError(f"database busy: no connection became free in time ({reason})")
    if sqlstate == _LOCK_TIMEOUT or "database is locked" in reason:
        return DatabaseUnavailableError(f"database busy: a lock is held by another transaction ({reason}); "
                                        "nothing was changed, retry")
    if sqlstate == _STATEMENT_TIMEOUT:
        return DatabaseUnavailableError(
            f"database busy: a statement ran too long ({reason}); nothing was changed, retry")
    return DatabaseUnavailableError(f"database unavailable: {reason}")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database being down or busy (see :func:`unavailable`)."""
    return isinstance(exc, UNAVAILABLE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def ping(engine: Engine) -> None:
    """One round trip to the database (raises when it does not answer)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


#: Key in the ASGI scope's ``state``: when the request's last body bytes arrived.
BODY_CLOCK = "peft_hub.body_received_at"


@dataclass
class WriteDeadline:
    """A write commits only within ``seconds`` of its request's last body
    bytes (the time its client starts waiting for the answer): past that, the
    client may have given up, so the change is rolled back, not kept."""

    seconds: float
    state: dict[str, Any]
    start: float = field(default_factory=time.monotonic)

    def passed(self) -> bool:
        return time.monotonic() > self.state.get(BODY_CLOCK, self.start) + self.seconds


def write_deadline(request: Any) -> WriteDeadline | None:
    """The deadline for ``request``'s commit; None for reads (GET, HEAD, OPTIONS)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    return WriteDeadline(request.app.state.settings.write_deadline, request.scope.setdefault("state", {}))


def session_scope(engine: Engine, deadline: WriteDeadline | None = None) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error, or
    when ``deadline`` has passed by the time it would commit."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            if deadline is not None and deadline.passed():
                raise UnavailableError(
                    f"the hub took longer than {deadline.seconds:g} s on this change (a slow database or blob "
                    "store), so it was rolled back: nothing was changed; retry"
                )
            session.commit()
        except BaseException:
            session.rollback()
            raise
