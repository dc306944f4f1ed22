"""Search summary tables: exact adapter counts per search key, kept by triggers.

``adapter_count`` holds how many adapters share each (kind, base model,
method, rank, max rank, private); ``adapter_owner_count`` each (kind, owner,
method, private). Search answers counts and facets from them when its filters
are among those keys (``crud.search``), reading a few thousand rows at most
instead of every matching adapter. Adapters without a method are left out, as
search leaves them out. The key columns are NOT NULL: a NULL base model is
keyed ``''``, a NULL rank ``2**62`` and a NULL max rank ``-2**62``
(``models.NO_RANK``), past any rank a query asks for. A key whose count
reaches 0 is deleted.

Triggers on ``adapter`` keep both exact in the transaction of every insert,
delete and change of a key column, whoever writes (the ORM, Core, bulk
inserts, another replica, a shell). On SQLite, UPSERTs in trigger bodies; on
PostgreSQL, one plpgsql function (``INSERT ... ON CONFLICT DO UPDATE``, whose
row locks keep concurrent writers exact). A later revision that rebuilds
``adapter`` in batch mode on SQLite drops these triggers with the old table:
it must call :func:`create_triggers` again (as 0006's). The backfill runs
after the triggers exist, in the same transaction, which holds the table's
write lock: no write falls between them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NO_RANK = 2**62  # models.NO_RANK, as it was when this revision shipped
#: Each summary table: its key columns, and how each is computed from an ``adapter`` row ``{r}``.
KEYS = {
    "adapter_count": {
        "kind": "{r}.kind", "base_model": "coalesce({r}.base_model, '')", "method": "{r}.method",
        "rank": f"coalesce({{r}}.rank, {NO_RANK})", "max_rank": f"coalesce({{r}}.max_rank, -{NO_RANK})",
        "private": "{r}.private",
    },
    "adapter_owner_count": {"kind": "{r}.kind", "owner": "{r}.owner", "method": "{r}.method", "private": "{r}.private"},
}
SOURCES = {"adapter_count": ("kind", "base_model", "method", "rank", "max_rank", "private"),
           "adapter_owner_count": ("kind", "owner", "method", "private")}
FUNCTION = "adapter_count_rows"


def _exprs(table: str, row: str) -> list[str]:
    return [e.format(r=row) for e in KEYS[table].values()]


def _match(table: str, row: str) -> str:
    return " AND ".join(f"{c} = {e}" for c, e in zip(KEYS[table], _exprs(table, row), strict=True))


def _add(table: str, row: str, where: str, plus: str) -> str:
    cols = ", ".join(KEYS[table])
    return (f"INSERT INTO {table} ({cols}, n) SELECT {', '.join(_exprs(table, row))}, 1 WHERE {where} "
            f"ON CONFLICT ({cols}) DO UPDATE SET n = {plus}.n + 1;")


def _remove(table: str, row: str, where: str) -> str:
    return (f"UPDATE {table} SET n = n - 1 WHERE {where} AND {_match(table, row)}; "
            f"DELETE FROM {table} WHERE {where} AND n = 0 AND {_match(table, row)};")


def _changed(table: str) -> str:
    return " OR ".join(f"old.{c} IS NOT new.{c}" for c in SOURCES[table])


def _sqlite_triggers() -> dict[str, str]:
    out = {}
    for t in KEYS:
        out[f"{t}_insert"] = f"AFTER INSERT ON adapter BEGIN {_add(t, 'new', 'new.method IS NOT NULL', t)} END"
        out[f"{t}_delete"] = f"AFTER DELETE ON adapter BEGIN {_remove(t, 'old', 'old.method IS NOT NULL')} END"
        out[f"{t}_update"] = (f"AFTER UPDATE OF {', '.join(SOURCES[t])} ON adapter WHEN {_changed(t)} BEGIN "
                              f"{_remove(t, 'old', 'old.method IS NOT NULL')} "
                              f"{_add(t, 'new', 'new.method IS NOT NULL', t)} END")
    return out


TRIGGERS = _sqlite_triggers()


def _postgres_function() -> str:
    blocks = []
    for t in KEYS:
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in SOURCES[t])
        blocks.append(f"""
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {_remove(t, 'OLD', 'OLD.method IS NOT NULL')}
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ({changed})) THEN
        {_add(t, 'NEW', 'NEW.method IS NOT NULL', t)}
    END IF;""")
    return (f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN{''.join(blocks)}\n"
            "    RETURN NULL;\nEND $$")


def create_triggers() -> None:
    """The triggers that keep the summary tables exact (on SQLite, again after a batch rebuild of ``adapter``)."""
    if op.get_context().dialect.name == "sqlite":
        for name, body in TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        return
    op.execute(_postgres_function())
    watched = ", ".join(dict.fromkeys(c for cols in SOURCES.values() for c in cols))
    op.execute(f"CREATE TRIGGER {FUNCTION} AFTER INSERT OR DELETE OR UPDATE OF {watched} ON adapter "
               f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()")


def upgrade() -> None:
    op.create_table(
        "adapter_count",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("base_model", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("rank", sa.BigInteger(), nullable=False),
        sa.Column("max_rank", sa.BigInteger(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "base_model", "method", "rank", "max_rank", "private"),
    )
    op.create_table(
        "adapter_owner_count",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "owner", "method", "private"),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute("LOCK TABLE adapter IN SHARE ROW EXCLUSIVE MODE")  # no write between the triggers and the backfill
    create_triggers()
    for table in KEYS:
        exprs = ", ".join(_exprs(table, "adapter"))
        op.execute(f"INSERT INTO {table} ({', '.join(KEYS[table])}, n) SELECT {exprs}, count(*) FROM adapter "
                   f"WHERE adapter.method IS NOT NULL GROUP BY {exprs}")


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    else:
        op.execute(f"DROP TRIGGER {FUNCTION} ON adapter")
        op.execute(f"DROP FUNCTION {FUNCTION}()")
    op.drop_table("adapter_owner_count")
    op.drop_table("adapter_count")
