"""Schema versions, applied in order by ``peft-hub db upgrade`` and at start.

Each migration is a function of a connection. The applied version is kept in
``peft_hub_schema``; a migration and its version bump commit together.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine
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


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _initial),
    (2, "upload receipts, web sessions, audit log, token expiry", _security),
    (3, "64-bit sizes", _big_sizes),
    (4, "blob rows for publish/gc agreement", _blob_rows),
]


def current_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS peft_hub_schema (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT MAX(version) FROM peft_hub_schema")).first()
    return int(row[0] or 0) if row else 0


def upgrade(engine: Engine) -> list[str]:
    """Apply every migration newer than the database; return what was applied."""
    applied = []
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two hubs starting at once must not both migrate.
            conn.execute(text("SELECT pg_advisory_xact_lock(7351001)"))
        version = current_version(conn)
        for number, title, apply in MIGRATIONS:
            if number > version:
                apply(conn)
                conn.execute(text("INSERT INTO peft_hub_schema (version) VALUES (:v)"), {"v": number})
                applied.append(f"{number:04d} {title}")
    return applied
