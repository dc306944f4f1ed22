"""Facet summaries: base model and owner beside a tag, owner beside a rank range; kept by triggers.

``adapter_tag_facet_count`` holds how many adapters carry each tag name, by
one facet's value (``facet`` is ``'base_model'`` or ``'owner'``; a NULL base
model is keyed ``''``, as 0008 keys it) and the adapter's (kind, method,
private): what the catalog's base model and owner facets beside a ``tag=``
filter (alone or with kind and method) count instead of every tagged row.
It is a live ``GROUP BY`` over ``tag JOIN adapter``, once per facet: each
tagged adapter with a method counts once under its base model and once
under its owner; a key whose count reaches 0 is deleted.

Its triggers are those of 0009 with two key rows per tag, in the same
places, on the same events (on ``adapter`` also ``UPDATE OF base_model,
owner``), and a statement trigger empties it when ``adapter`` or ``tag`` is
truncated (0012's reason). On PostgreSQL a tag's trigger first takes its
adapter's ``adapter_count`` row, as 0009's does, so every writer takes the
rows in one order (a write to ``adapter`` takes ``adapter_count``'s row first:
its trigger's name sorts first). A later revision that rebuilds ``adapter``
or ``tag`` in batch mode on SQLite must call :func:`create_triggers` again.

``adapter_owner_rank_count`` holds how many adapters with a method share
each (private, owner, rank, max rank), keyed as 0008 keys ranks (a NULL rank
``2**62``, a NULL max rank ``-2**62``): the owner facet beside a rank range
(and nothing else), which read every matching row. Row triggers on
``adapter`` keep it as 0008's keep ``adapter_owner_count`` (its PostgreSQL
trigger's name sorts after 0008's, so a write takes ``adapter_count``'s row
first). Both tables are ``WITHOUT ROWID`` on SQLite: stored in key order, a
tag's values (or the owners) are read in order and grouped as they come.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLE = "adapter_tag_facet_count"
COLS = "tag, facet, value, kind, method, private"
#: The adapter columns a tag's keys read (``id`` too: the tags that point at it).
WATCHED = ("id", "kind", "method", "private", "base_model", "owner")
FUNCTIONS = {"tag": "adapter_tag_facet_count_tag_rows", "adapter": "adapter_tag_facet_count_adapter_rows"}
NO_RANK = 2**62  # models.NO_RANK, as it was when this revision shipped
#: The owner facet beside a rank range: its table, key columns and how each is computed from an adapter row.
RANKED = "adapter_owner_rank_count"
RANKED_KEYS = {"private": "{r}.private", "owner": "{r}.owner", "rank": f"coalesce({{r}}.rank, {NO_RANK})",
               "max_rank": f"coalesce({{r}}.max_rank, -{NO_RANK})"}
RANKED_SOURCES = ("private", "owner", "rank", "max_rank", "method")
RANKED_FUNCTION = "adapter_owner_rank_count_rows"
#: The table truncated, the statement trigger (and function) it fires, and the summaries that function empties.
EMPTIED = {"adapter": ("adapter_summaries_0013_truncate", (TABLE, RANKED)),
           "tag": ("tag_summary_0013_truncate", (TABLE,))}


def _add(select: str) -> str:
    """Count one more for each key row ``select`` yields (``COLS``)."""
    return (f"INSERT INTO {TABLE} ({COLS}, n) SELECT {COLS}, count(*) FROM ({select}) AS k "
            f"WHERE true GROUP BY {COLS} ON CONFLICT ({COLS}) DO UPDATE SET n = {TABLE}.n + excluded.n;")


def _remove(select: str) -> str:
    """Count one less for each key row ``select`` yields; drop the keys that reach 0."""
    match = f"({COLS}) IN (SELECT {COLS} FROM ({select}) AS k)"
    same = " AND ".join(f"k.{c} = {TABLE}.{c}" for c in COLS.split(", "))
    return (f"UPDATE {TABLE} SET n = n - (SELECT count(*) FROM ({select}) AS k WHERE {same}) "
            f"WHERE {match}; DELETE FROM {TABLE} WHERE n = 0 AND {match};")


def _keys(tag: str, adapter: str, source: str) -> str:
    """The two key rows (base model, owner) of tag name ``tag`` on adapter ``adapter``, from ``source``."""
    facets = (("base_model", f"coalesce({adapter}.base_model, '')"), ("owner", f"{adapter}.owner"))
    return " UNION ALL ".join(
        f"SELECT {tag} AS tag, '{facet}' AS facet, {value} AS value, {adapter}.kind AS kind, "
        f"{adapter}.method AS method, {adapter}.private AS private {source}" for facet, value in facets)


def _of_tag(row: str) -> str:
    """The keys of tag row ``row``, if its adapter exists and has a method."""
    return _keys(f"{row}.name", "a", f"FROM adapter AS a WHERE a.id = {row}.adapter_id AND a.method IS NOT NULL")


def _of_adapter(row: str) -> str:
    """The keys of the tags that point at adapter row ``row`` (as it was or is)."""
    return _keys("t.name", row, f"FROM tag AS t WHERE t.adapter_id = {row}.id AND {row}.method IS NOT NULL")


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


def _ranked(row: str, op_: str) -> str:
    """Count adapter row ``row`` in ``adapter_owner_rank_count`` once more (``op_`` ``+``) or once less (``-``)."""
    cols = ", ".join(RANKED_KEYS)
    exprs = [e.format(r=row) for e in RANKED_KEYS.values()]
    if op_ == "+":
        return (f"INSERT INTO {RANKED} ({cols}, n) SELECT {', '.join(exprs)}, 1 WHERE {row}.method IS NOT NULL "
                f"ON CONFLICT ({cols}) DO UPDATE SET n = {RANKED}.n + 1;")
    match = " AND ".join(f"{c} = {e}" for c, e in zip(RANKED_KEYS, exprs, strict=True))
    return (f"UPDATE {RANKED} SET n = n - 1 WHERE {row}.method IS NOT NULL AND {match}; "
            f"DELETE FROM {RANKED} WHERE {row}.method IS NOT NULL AND n = 0 AND {match};")


def _ranked_sqlite_triggers() -> dict[str, str]:
    changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in RANKED_SOURCES)
    return {
        f"{RANKED}_insert": f"AFTER INSERT ON adapter BEGIN {_ranked('new', '+')} END",
        f"{RANKED}_delete": f"AFTER DELETE ON adapter BEGIN {_ranked('old', '-')} END",
        f"{RANKED}_update": (f"AFTER UPDATE OF {', '.join(RANKED_SOURCES)} ON adapter WHEN {changed} BEGIN "
                             f"{_ranked('old', '-')} {_ranked('new', '+')} END"),
    }


TRIGGERS = {**_sqlite_triggers(), **_ranked_sqlite_triggers()}


def _lock_adapter_count(row: str) -> str:
    """Lock the ``adapter_count`` row (0008) of tag ``row``'s adapter first, as 0009's tag trigger does."""
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
    """The triggers that keep ``adapter_tag_facet_count`` exact (on SQLite, again
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
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in RANKED_SOURCES)
    op.execute(f"""CREATE FUNCTION {RANKED_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {_ranked('OLD', '-')}
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {_ranked('NEW', '+')}
    END IF;
    RETURN NULL;
END $$""")
    op.execute(f"CREATE TRIGGER {RANKED_FUNCTION} AFTER INSERT OR DELETE OR UPDATE OF {', '.join(RANKED_SOURCES)} "
               f"ON adapter FOR EACH ROW EXECUTE FUNCTION {RANKED_FUNCTION}()")
    for table, (name, summaries) in EMPTIED.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   f"BEGIN\n    TRUNCATE {', '.join(summaries)};\n    RETURN NULL;\nEND $$")
        op.execute(f"CREATE TRIGGER {name} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {name}()")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("facet", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tag", "facet", "value", "kind", "method", "private"),
        sqlite_with_rowid=False,  # the rows in key order: a facet's values are read in order, grouped as they come
    )
    op.create_table(
        RANKED,
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.BigInteger(), nullable=False),
        sa.Column("max_rank", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("private", "owner", "rank", "max_rank"),
        sqlite_with_rowid=False,
    )
    if op.get_context().dialect.name == "postgresql":  # no write between the triggers and the backfill
        op.execute("LOCK TABLE adapter, tag IN SHARE ROW EXCLUSIVE MODE")
    create_triggers()
    keys = _keys("t.name", "a", "FROM tag AS t JOIN adapter AS a ON a.id = t.adapter_id WHERE a.method IS NOT NULL")
    op.execute(f"INSERT INTO {TABLE} ({COLS}, n) SELECT {COLS}, count(*) FROM ({keys}) AS k GROUP BY {COLS}")
    exprs = ", ".join(e.format(r="adapter") for e in RANKED_KEYS.values())
    op.execute(f"INSERT INTO {RANKED} ({', '.join(RANKED_KEYS)}, n) SELECT {exprs}, count(*) FROM adapter "
               f"WHERE adapter.method IS NOT NULL GROUP BY {exprs}")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    else:
        for table, (name, _) in EMPTIED.items():
            op.execute(f"DROP TRIGGER {name} ON {table}")
            op.execute(f"DROP FUNCTION {name}()")
        for table, function in (*FUNCTIONS.items(), ("adapter", RANKED_FUNCTION)):
            op.execute(f"DROP TRIGGER {function} ON {table}")
            op.execute(f"DROP FUNCTION {function}()")
    op.drop_table(RANKED)
    op.drop_table(TABLE)
