"""SQLite full-text index for ``q=``: an FTS5 ``trigram`` table over adapters.

``adapter_fts`` is an external-content FTS5 table (it stores only the index;
its columns are read from ``adapter`` by rowid) over the four fields ``q=``
looks in: name, owner, base model, description. On a trigram table, ``col
LIKE '%x%'`` is answered from the index and then checked by SQLite's own
LIKE on the real value, so it matches exactly what the same LIKE on
``adapter`` matches (``crud.search.TextLike`` uses it for queries the index
can narrow). Triggers keep it in step with every insert, delete and change
of those fields, whoever writes the row (the ORM, Core, a shell).

Alembic's ``check`` leaves ``adapter_fts*`` alone (the models do not declare
it: see ``peft_hub.hub.alembic.context_options``). A later revision that
rebuilds ``adapter`` in batch mode on SQLite (copy and move) drops these
triggers with the old table: it must call :func:`create_triggers` again.
PostgreSQL answers ``q=`` from the ``pg_trgm`` indexes of 0005: no-op there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-13
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "adapter_fts"
COLUMNS = ("name", "owner", "base_model", "description")
_cols = ", ".join(COLUMNS)
_new = ", ".join(f"new.{c}" for c in COLUMNS)
_old = ", ".join(f"old.{c}" for c in COLUMNS)
_insert = f"INSERT INTO {TABLE}(rowid, {_cols}) VALUES (new.id, {_new});"
# External content: a row leaves the index by naming the values it was indexed with.
_delete = f"INSERT INTO {TABLE}({TABLE}, rowid, {_cols}) VALUES ('delete', old.id, {_old});"
TRIGGERS = {
    f"{TABLE}_insert": f"AFTER INSERT ON adapter BEGIN {_insert} END",
    f"{TABLE}_delete": f"AFTER DELETE ON adapter BEGIN {_delete} END",
    # Only changes of the indexed fields (not of download counts) touch the index.
    f"{TABLE}_update": f"AFTER UPDATE OF id, {_cols} ON adapter BEGIN {_delete} {_insert} END",
}


def create_triggers() -> None:
    for name, body in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    op.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5({_cols}, content='adapter', content_rowid='id', "
               "tokenize='trigram')")
    create_triggers()
    op.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")  # the rows there are


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name}")
    op.execute(f"DROP TABLE {TABLE}")
