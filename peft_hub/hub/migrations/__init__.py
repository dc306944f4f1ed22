"""Schema versions, applied in order by ``peft-hub db upgrade`` and at start.

Each migration is a function of a connection. The applied version is kept in
``peft_hub_schema``; a migration and its version bump commit together.

Several hub processes may start at once on one database (replicas behind a
proxy, or a few processes on one SQLite file). Every change of the schema,
and the creation of the first admin, runs inside :func:`exclusive`: the
database's own lock makes each check-then-change one step, so one process
migrates, the others wait and then find nothing to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel


def _initial(conn: Connection) -> None:
    from peft_hub.hub import models  # noqa: F401

    SQLModel.metadata.create_all(conn)


def _security(conn: Connection) -> None:
    """Upload receipts, server-side web sessions, the audit log, token expiry."""
    from peft_hub.hub import models

    for column, kind in (("name", "VARCHAR(64) NOT NULL DEFAULT ''"), ("expires_at", "TIMESTAMP"),
                         ("last_used_at", "TIMESTAMP")):
        existing = {c["name"] for c in inspect(conn).get_columns("token")}
        if column not in existing:
            conn.execute(text(f"ALTER TABLE token ADD COLUMN {column} {kind}"))
    tables = [models.BlobUpload.__table__, models.WebSession.__table__, models.AuditEvent.__table__]
    SQLModel.metadata.create_all(conn, tables=tables)


def _big_sizes(conn: Connection) -> None:
    """Sizes and counters as 64-bit integers: files up to the 8 GiB cap fit.
    (SQLite's INTEGER is 64-bit already.)"""
    if conn.dialect.name != "postgresql":
        return
    for table, column in (("revisionfile", "size"), ("adapter", "total_size"), ("adapter", "downloads"),
                          ("blobupload", "size")):
        conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT"))


def _blob_rows(conn: Connection) -> None:
    """The blob table publish and gc lock (rows appear as blobs are used)."""
    from peft_hub.hub import models

    SQLModel.metadata.create_all(conn, tables=[models.Blob.__table__])


def _revision_health(conn: Connection) -> None:
    """``revision.broken``: what ``fsck --repair`` found wrong with a revision's blobs."""
    if "broken" not in {c["name"] for c in inspect(conn).get_columns("revision")}:
        conn.execute(text("ALTER TABLE revision ADD COLUMN broken JSON"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _initial),
    (2, "upload receipts, web sessions, audit log, token expiry", _security),
    (3, "64-bit sizes", _big_sizes),
    (4, "blob rows for publish/gc agreement", _blob_rows),
    (5, "revision health marks from fsck", _revision_health),
]


def current_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS peft_hub_schema (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT MAX(version) FROM peft_hub_schema")).first()
    return int(row[0] or 0) if row else 0


#: The PostgreSQL advisory lock taken by schema changes and the first-admin bootstrap.
LOCK_KEY = 7351001
#: Seconds a SQLite process keeps asking for the write lock while another migrates.
SQLITE_WAIT_SECONDS = 600


def exclusive(conn: Connection) -> None:
    """Make the transaction ``conn`` is in the only one, across every process,
    that migrates or bootstraps, until it commits or rolls back. Call it first
    thing in a fresh transaction.

    PostgreSQL: a transaction-scoped advisory lock. The request bounds
    (``lock_timeout``, ``statement_timeout``) are lifted for this transaction:
    a replica waits for another's migration however long it takes, and a
    long migration is not cut off.

    SQLite: ``BEGIN IMMEDIATE``, the database's write lock, taken before the
    first read (a plain BEGIN reads first and may then fail to become a
    writer with "database is locked"); retried past the busy timeout for up
    to :data:`SQLITE_WAIT_SECONDS`.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL lock_timeout = 0"))
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        deadline = time.monotonic() + SQLITE_WAIT_SECONDS
        while True:
            try:
                # pysqlite begins transactions lazily and runs DDL outside them
                # unless one is open: open it now, as a writer.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the busy timeout waited already; this only keeps a zero one from spinning


def upgrade(engine: Engine) -> list[str]:
    """Apply every migration newer than the database; return what was applied.

    Safe to run from several processes at once: see :func:`exclusive`.
    """
    applied = []
    with engine.begin() as conn:
        exclusive(conn)
        version = current_version(conn)
        for number, title, apply in MIGRATIONS:
            if number > version:
                apply(conn)
                conn.execute(text("INSERT INTO peft_hub_schema (version) VALUES (:v)"), {"v": number})
                applied.append(f"{number:04d} {title}")
    return applied
