"""Adopting a database made by the in-house schema runner used before Alembic.

That runner kept its version (1 to 5) in ``peft_hub_schema``, and its version
1 was "whatever ``models.py`` said that day", so such databases differ by the
day they were made. :func:`adopt` brings any of them to revision 0001's
schema: the in-house steps it had not run yet, then repairs of the drift
known to exist (a column added to the models without a step, timestamps
without a time zone); it then drops ``peft_hub_schema`` and stamps 0001, and
Alembic takes over. Called only by :func:`peft_hub.hub.migrations.upgrade`,
in its locked transaction, so the adoption commits whole or not at all.

The steps are frozen: tables are created by revision 0001's own functions,
never from today's models.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

#: Where the in-house runner kept its version.
TABLE = "peft_hub_schema"
BASELINE = "0001"
#: Every timestamp column of the baseline: timezone-aware, as revision 0001 makes them.
TIMESTAMPS = {
    "namespace": ["created_at"], "token": ["created_at", "expires_at", "last_used_at"],
    "adapter": ["created_at", "updated_at"], "revision": ["created_at"], "tag": ["updated_at"],
    "eval": ["created_at"], "blobupload": ["created_at"], "websession": ["created_at", "expires_at"],
    "auditevent": ["at"], "blob": ["created_at", "claimed_until"],
}

Create = Callable[..., None]


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _timestamp(conn: Connection) -> str:
    return str(sa.DateTime(timezone=True).compile(dialect=conn.dialect))


def _security(conn: Connection, create: Create) -> None:
    """Upload receipts, web sessions, the audit log, token names and expiry."""
    stamp = _timestamp(conn)
    for column, kind in (("name", "VARCHAR(64) NOT NULL DEFAULT ''"), ("expires_at", stamp), ("last_used_at", stamp)):
        if column not in _columns(conn, "token"):
            conn.execute(text(f"ALTER TABLE token ADD COLUMN {column} {kind}"))
    if conn.dialect.name == "postgresql":  # the default only filled the rows there were (SQLite cannot drop it)
        conn.execute(text("ALTER TABLE token ALTER COLUMN name DROP DEFAULT"))
    create("blobupload", "websession", "auditevent")


def _big_sizes(conn: Connection, create: Create) -> None:
    """Sizes and counters as 64-bit integers (SQLite's INTEGER is 64-bit already)."""
    if conn.dialect.name != "postgresql":
        return
    for table, column in (("revisionfile", "size"), ("adapter", "total_size"), ("adapter", "downloads"),
                          ("blobupload", "size")):
        conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT"))


def _blob_rows(conn: Connection, create: Create) -> None:
    """The blob table publish and gc lock."""
    create("blob")


def _revision_health(conn: Connection, create: Create) -> None:
    """``revision.broken``: what ``fsck --repair`` found wrong."""
    if "broken" not in _columns(conn, "revision"):
        conn.execute(text("ALTER TABLE revision ADD COLUMN broken JSON"))


#: The in-house steps after version 1 (which made every table of its day).
STEPS: list[tuple[int, str, Callable[[Connection, Create], None]]] = [
    (2, "upload receipts, web sessions, audit log, token expiry", _security),
    (3, "64-bit sizes", _big_sizes),
    (4, "blob rows for publish/gc agreement", _blob_rows),
    (5, "revision health marks from fsck", _revision_health),
]


def _repair(conn: Connection) -> None:
    """The drift the in-house runner let in: ``blob.claimed_until`` came into
    the models with no step; on PostgreSQL, timestamps made by an old step
    (or an older SQLModel) lack the time zone, and the hub wrote them in UTC."""
    stamp = _timestamp(conn)
    if "claimed_until" not in _columns(conn, "blob"):
        conn.execute(text(f"ALTER TABLE blob ADD COLUMN claimed_until {stamp}"))
    if conn.dialect.name != "postgresql":
        return
    for table, names in TIMESTAMPS.items():
        for column in inspect(conn).get_columns(table):
            if column["name"] in names and not getattr(column["type"], "timezone", True):
                name = column["name"]
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {name} TYPE {stamp} "
                                  f"USING {name} AT TIME ZONE 'UTC'"))


def version(conn: Connection) -> int | None:
    """The in-house version of the database (0 when the table is empty), or
    None when it has no in-house table (a new database, or one Alembic has)."""
    if not inspect(conn).has_table(TABLE):
        return None
    return int(conn.execute(text(f"SELECT MAX(version) FROM {TABLE}")).scalar() or 0)


def adopt(conn: Connection, script: ScriptDirectory) -> list[str]:
    """Bring an in-house database to revision 0001 and stamp it; return what was done.

    A database with no in-house table is left alone (``[]``); one whose table
    is empty had no schema yet, so only the table goes and Alembic builds all.
    """
    number = version(conn)
    if number is None:
        return []
    done = []
    if number:
        baseline = script.get_revision(BASELINE).module
        context = MigrationContext.configure(conn)

        def create(*names: str) -> None:
            with Operations.context(context):
                for name in names:
                    if not inspect(conn).has_table(name):
                        baseline.TABLES[name]()

        for step_number, title, step in STEPS:
            if step_number > number:
                step(conn, create)
                done.append(f"in-house {step_number} {title}")
        _repair(conn)
    conn.execute(text(f"DROP TABLE {TABLE}"))
    if number:
        context.stamp(script, BASELINE)
        done.append(f"adopted in-house version {number} as {BASELINE}")
    return done
