"""PostgreSQL's text body for short ``q=``: one lower-cased string per adapter.

``adapter_fts_body`` holds, for each adapter, ``lower()`` of each field
``q=`` looks in (name, owner, base model, description; a NULL as ``''``)
joined by ``chr(31)``, a character a query that uses it cannot contain
(``crud.search_sql.body_safe``). A query without three letters or digits in
a row is beyond the ``pg_trgm`` indexes of 0005 and read every adapter row,
computing ``lower()`` of four fields each time; its ``LIKE`` on this one
precomputed column decides the same rows in half the time (at 100,000
adapters, the count of ``q=qa`` 96 -> 42 ms). A pattern without wildcards
and without ``chr(31)`` is in the joined string exactly when it is in one
field's ``lower()``, which is the old test.

One plpgsql row trigger on ``adapter`` keeps it exact in the writer's own
transaction (insert, delete, and a change of id or of a searched field),
whoever writes, and a statement trigger empties it when ``adapter`` is
truncated (which fires no row trigger: an operator's reset, a restore).
The backfill runs after the trigger exists, under a lock that holds
writers off until the migration commits. A change of what
``lower()`` does (a new collation library) makes it stale as it makes the
``lower()`` indexes of 0005 stale: rebuild it with the query in
``backfill()`` when those are reindexed. Its name starts with
``adapter_fts`` so that ``alembic check`` leaves it alone (it is no model).
SQLite has no such table: its LIKE over the row costs about what a scan of
a side table does (40 against 41 ms), so it keeps the plan of 0006.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLE = "adapter_fts_body"
FUNCTION = "adapter_fts_body_row"
COLUMNS = ("name", "owner", "base_model", "description")


def body(row: str) -> str:
    """The joined string of an ``adapter`` row called ``row``."""
    return " || chr(31) || ".join(f"lower(coalesce({row}.{c}, ''))" for c in COLUMNS)


_changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in ("id", *COLUMNS))
_FUNCTION = f"""CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NOT ({_changed}) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        DELETE FROM {TABLE} WHERE id = OLD.id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO {TABLE} (id, body) VALUES (NEW.id, {body('NEW')})
            ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body;
    END IF;
    RETURN NULL;
END $$"""


TRUNCATED = "adapter_fts_body_truncate"
_TRUNCATED = f"""CREATE FUNCTION {TRUNCATED}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE {TABLE};
    RETURN NULL;
END $$"""


def backfill() -> None:
    op.execute(f"DELETE FROM {TABLE}")
    op.execute(f"INSERT INTO {TABLE} (id, body) SELECT adapter.id, {body('adapter')} FROM adapter")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, body text NOT NULL)")
    op.execute("LOCK TABLE adapter IN SHARE ROW EXCLUSIVE MODE")  # no write between the trigger and the backfill
    op.execute(_FUNCTION)
    op.execute(f"CREATE TRIGGER {FUNCTION} AFTER INSERT OR DELETE OR UPDATE OF id, {', '.join(COLUMNS)} "
               f"ON adapter FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()")
    op.execute(_TRUNCATED)
    op.execute(f"CREATE TRIGGER {TRUNCATED} AFTER TRUNCATE ON adapter FOR EACH STATEMENT "
               f"EXECUTE FUNCTION {TRUNCATED}()")
    backfill()


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER {TRUNCATED} ON adapter")
    op.execute(f"DROP FUNCTION {TRUNCATED}()")
    op.execute(f"DROP TRIGGER {FUNCTION} ON adapter")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
    op.execute(f"DROP TABLE {TABLE}")
