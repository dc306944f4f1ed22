"""Tag summary table: exact adapter counts per tag, kept by triggers.

``adapter_tag_count`` holds how many adapters carry each tag name, by the
adapter's (kind, method, private): what search's ``tag=`` filter counts
(alone or with kind and method, and the kind and method facets beside it)
instead of every tagged row. It is a live ``GROUP BY`` over ``tag JOIN
adapter``: adapters without a method are left out, as search leaves them
out; a tag whose adapter row does not exist is not counted; a key whose
count reaches 0 is deleted. An adapter has at most one tag of a name (the
tag's primary key), so a count of tags is a count of adapters.

Triggers keep it exact in the transaction of every write, whoever writes:

- on ``tag``: INSERT, DELETE, and UPDATE OF name, adapter_id (moving
  ``main`` to a new revision changes neither, and fires nothing);
- on ``adapter``: UPDATE OF id, kind, method, private moves every tag of
  that adapter between keys; INSERT and DELETE count the tags that already
  point at that id. ``tag.adapter_id`` has no ``ON DELETE`` action, so with
  foreign keys enforced (always on PostgreSQL; the hub's SQLite engine sets
  ``foreign_keys=ON``) an adapter's tags go first (``crud.delete_adapter``)
  and these find none; a SQLite shell without the pragma can delete an
  adapter under its tags or insert one under orphans, and the count still
  follows the join. Each tagged pair is counted by exactly one side: a
  tag's trigger finds its adapter row, or the adapter's finds its tags.

SQLite: UPSERTs in trigger bodies; PostgreSQL: one plpgsql function per
table, as 0008's. A later revision that rebuilds ``adapter`` or ``tag`` in
batch mode on SQLite drops these triggers with the old table: it must call
:func:`create_triggers` again. The backfill runs after the triggers exist, in
the same transaction, under the tables' write lock.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-16
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "adapter_tag_count"
COLS = "tag, kind, method, private"
#: The adapter columns a tag's key reads (``id`` too: the tags that point at it).
WATCHED = ("id", "kind", "method", "private")
FUNCTIONS = {"tag": "adapter_tag_count_tag_rows", "adapter": "adapter_tag_count_adapter_rows"}


def _add(select: str) -> str:
    """Count one more for each key row ``select`` yields (``tag, kind, method, private``)."""
    return (f"INSERT INTO {TABLE} ({COLS}, n) SELECT {COLS}, count(*) FROM ({select}) AS k "
            f"WHERE true GROUP BY {COLS} ON CONFLICT ({COLS}) DO UPDATE SET n = {TABLE}.n + excluded.n;")


def _remove(select: str) -> str:
    """Count one less for each key row ``select`` yields; drop the keys that reach 0."""
    match = f"({COLS}) IN (SELECT {COLS} FROM ({select}) AS k)"
    return (f"UPDATE {TABLE} SET n = n - (SELECT count(*) FROM ({select}) AS k WHERE k.tag = {TABLE}.tag "
            f"AND k.kind = {TABLE}.kind AND k.method = {TABLE}.method AND k.private = {TABLE}.private) "
            f"WHERE {match}; DELETE FROM {TABLE} WHERE n = 0 AND {match};")


def _of_tag(row: str) -> str:
    """The key of tag row ``row``, if its adapter exists and has a method."""
    return (f"SELECT {row}.name AS tag, a.kind AS kind, a.method AS method, a.private AS private "
            f"FROM adapter AS a WHERE a.id = {row}.adapter_id AND a.method IS NOT NULL")


def _of_adapter(row: str) -> str:
    """The keys of the tags that point at adapter row ``row`` (as it was or is)."""
    return (f"SELECT t.name AS tag, {row}.kind AS kind, {row}.method AS method, {row}.private AS private "
            f"FROM tag AS t WHERE t.adapter_id = {row}.id AND {row}.method IS NOT NULL")


def _sqlite_triggers() -> dict[str, str]:
    tag_changed = "old.name IS NOT new.name OR old.adapter_id IS NOT new.adapter_id"
    adapter_changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in WATCHED)
    return {
        f"{TABLE}_tag_insert": f"AFTER INSERT ON tag BEGIN {_add(_of_tag('new'))} END",
        f"{TABLE}_tag_delete": f"AFTER DELETE ON tag BEGIN {_remove(_of_tag('old'))} END",
        f"{TABLE}_tag_update": (f"AFTER UPDATE OF name, adapter_id ON tag WHEN {tag_changed} BEGIN "
                                f"{_remove(_of_tag('old'))} {_add(_of_tag('new'))} END"),
        f"{TABLE}_adapter_insert": f"AFTER INSERT ON adapter BEGIN {_add(_of_adapter('new'))} END",
        f"{TABLE}_adapter_delete": f"AFTER DELETE ON adapter BEGIN {_remove(_of_adapter('old'))} END",
        f"{TABLE}_adapter_update": (f"AFTER UPDATE OF {', '.join(WATCHED)} ON adapter WHEN {adapter_changed} "
                                    f"BEGIN {_remove(_of_adapter('old'))} {_add(_of_adapter('new'))} END"),
    }


TRIGGERS = _sqlite_triggers()


NO_RANK = 2**62  # models.NO_RANK, as it was when this revision shipped


def _lock_adapter_count(row: str) -> str:
    """Lock the ``adapter_count`` row (0008) of tag ``row``'s adapter, before this table's.

    A write to ``adapter`` takes its ``adapter_count`` row and then (its tags'
    rows, or a tag inserted after it) this table's; ``crud.delete_adapter``
    deletes the tags first. Taking the adapter's ``adapter_count`` row first
    here too keeps one order, so a publish and a delete of the same key wait
    for each other instead of deadlocking.
    """
    return (f"PERFORM 1 FROM adapter_count AS c JOIN adapter AS a ON a.id = {row}.adapter_id "
            "WHERE c.kind = a.kind AND c.base_model = coalesce(a.base_model, '') AND c.method = a.method "
            f"AND c.rank = coalesce(a.rank, {NO_RANK}) AND c.max_rank = coalesce(a.max_rank, -{NO_RANK}) "
            "AND c.private = a.private FOR NO KEY UPDATE OF c;")


def _postgres_function(name: str, of: str, changed: str) -> str:
    key = _of_tag if of == "tag" else _of_adapter
    lock = {"OLD": _lock_adapter_count("OLD"), "NEW": _lock_adapter_count("NEW")} if of == "tag" else {}
    return f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {lock.get('OLD', '')}
        {_remove(key('OLD'))}
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {lock.get('NEW', '')}
        {_add(key('NEW'))}
    END IF;
    RETURN NULL;
END $$"""


def create_triggers() -> None:
    """The triggers that keep ``adapter_tag_count`` exact (on SQLite, again
    after a batch rebuild of ``adapter`` or ``tag``)."""
    if op.get_context().dialect.name == "sqlite":
        for name, body in TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        return
    watched = {"tag": ("name", "adapter_id"), "adapter": WATCHED}
    for table, function in FUNCTIONS.items():
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in watched[table])
        op.execute(_postgres_function(function, table, changed))
        op.execute(f"CREATE TRIGGER {function} AFTER INSERT OR DELETE OR UPDATE OF {', '.join(watched[table])} "
                   f"ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tag", "kind", "method", "private"),
    )
    if op.get_context().dialect.name == "postgresql":  # no write between the triggers and the backfill
        op.execute("LOCK TABLE adapter, tag IN SHARE ROW EXCLUSIVE MODE")
    create_triggers()
    op.execute(f"INSERT INTO {TABLE} ({COLS}, n) SELECT t.name, a.kind, a.method, a.private, count(*) "
               "FROM tag AS t JOIN adapter AS a ON a.id = t.adapter_id WHERE a.method IS NOT NULL "
               "GROUP BY t.name, a.kind, a.method, a.private")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    else:
        for table, function in FUNCTIONS.items():
            op.execute(f"DROP TRIGGER {function} ON {table}")
            op.execute(f"DROP FUNCTION {function}()")
    op.drop_table(TABLE)
