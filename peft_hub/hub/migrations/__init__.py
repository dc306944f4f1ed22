"""Schema upgrades: Alembic's revisions (``peft_hub/hub/alembic/``), run by
``peft-hub db upgrade`` and by every hub as it starts.

Several hub processes may start at once on one database (replicas behind a
proxy, or a few processes on one SQLite file). Every change of the schema,
and the creation of the first admin, runs inside :func:`exclusive`: the
database's own lock makes each check-then-change one step, so one process
migrates, the others wait and then find nothing to do. An upgrade is one
transaction: it commits whole or leaves the database as it was.

A database made by the in-house runner used before Alembic (table
``peft_hub_schema``) is adopted first, in the same transaction: see
:mod:`peft_hub.hub.alembic.legacy`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from peft_hub.errors import ConflictError

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


def _script():
    from alembic.script import ScriptDirectory

    from peft_hub.hub.alembic import config

    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision this code knows."""
    return _script().get_current_head()


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> list[str]:
    """Bring the database to :func:`head`; return what was applied, oldest first.

    Safe to run from several processes at once: see :func:`exclusive`.
    """
    from alembic import command

    from peft_hub.hub.alembic import config, legacy

    script = _script()
    with engine.begin() as conn:
        exclusive(conn)
        applied = legacy.adopt(conn, script)
        before = _current(conn)
        if before is not None and before not in {rev.revision for rev in script.walk_revisions()}:
            raise ConflictError(f"the database is at schema revision {before}, which this peft-hub does not know "
                               "(made by a newer version?): upgrade peft-hub")
        command.upgrade(config(conn), "head")
        news = reversed(list(script.iterate_revisions("head", before)))
        applied += [f"{rev.revision} {(rev.doc or '').strip()}" for rev in news]
    return applied


def current(engine: Engine) -> str:
    """The database's schema revision, in words."""
    from peft_hub.hub.alembic import legacy

    with engine.connect() as conn:
        number = legacy.version(conn)
        if number is not None:
            return f"in-house version {number} (before Alembic): run peft-hub db upgrade"
        rev = _current(conn)
    if rev is None:
        return "empty: run peft-hub db upgrade"
    return rev + (" (head)" if rev == head() else f" (head is {head()}: run peft-hub db upgrade)")


def check(engine: Engine) -> list[str]:
    """What ``alembic check`` reports: every difference between the models and
    the database's schema (at head, none, unless a model changed with no
    revision). Each difference is one line."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from peft_hub.hub.alembic import context_options

    with engine.connect() as conn:
        options = context_options(conn.dialect.name)
        context = MigrationContext.configure(conn, opts=options)
        return [_describe(diff) for diff in compare_metadata(context, options["target_metadata"])]


def _describe(diff: Any) -> str:
    """One autogenerate difference on one line: ``add_column token.note``."""
    if isinstance(diff, list):  # the changes of one column
        return "; ".join(_describe(d) for d in diff)
    kind, *rest = diff
    if kind.startswith("modify_"):
        _schema, table, column, _existing, old, new = rest
        return f"{kind} {table}.{column}: {old!r} -> {new!r}"
    target = rest[-1]
    if kind in ("add_column", "remove_column"):
        return f"{kind} {rest[1]}.{target.name}"
    table = getattr(target, "table", None)
    prefix = f"{table.name}." if table is not None and table is not target else ""
    return f"{kind} {prefix}{getattr(target, 'name', None) or target}"
