"""PostgreSQL's text body as a generated column of ``adapter``, with one trigram index: every ``q=`` reads it.

``adapter.fts_body`` holds each searched field's ``lower()`` (name, owner,
base model, description; a NULL as ``''``) joined by ``chr(31)``, what
0011's side table held, as a ``STORED`` generated column: PostgreSQL
computes it in every writer's own statement, whoever writes, with no
trigger to keep. ``ix_adapter_fts_body_trgm`` (GIN, ``gin_trgm_ops``)
answers a ``q=`` with three letters or digits in a row; a shorter one reads
the column row by row. A ``q=`` without LIKE wildcards, the escape
character, ``chr(31)`` or NUL is in the body exactly when it is in one
field's ``lower()`` (the old test, ``crud.search_sql.body_test``); any other
is in the body whenever it is in a field, so the body narrows the rows and
the per-field test decides.

It replaces 0011's side table and triggers, and 0005's trigram indexes on
``lower(name)`` and ``lower(description)``. Those on the owner and the base
model stay: the catalog's type-ahead matches their prefixes. At 100,000
adapters the bounded count of a common word went from 6.8 to 1.6 ms (it read
four ``lower()`` calls a row), of a two-word query 5.5 to 4.1 ms (one index
and one LIKE a candidate instead of four of each).

Adding the column rewrites ``adapter`` under an exclusive lock (100,000
adapters: about 5 s here). As for 0011, a change of what ``lower()`` does (a
new collation library) makes the column stale as it makes the ``lower()``
indexes stale: ``UPDATE adapter SET name = name`` recomputes it. The column
and its index are no model (SQLite has neither): ``alembic check`` leaves
them alone (``peft_hub.hub.alembic.PG_TEXT_BODY``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-21
"""

from __future__ import annotations

import importlib
from typing import Any

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMN = "fts_body"
INDEX = "ix_adapter_fts_body_trgm"
#: 0005's trigram indexes that the body replaces.
REPLACED = ("name", "description")


def body() -> str:
    """The column's expression: 0011's joined string (of its fields), of the row being written."""
    return " || chr(31) || ".join(f"lower(coalesce({c}, ''))" for c in _side_table().COLUMNS)


def _side_table() -> Any:
    return importlib.import_module("peft_hub.hub.alembic.versions.0011_text_body")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE adapter ADD COLUMN {COLUMN} text GENERATED ALWAYS AS ({body()}) STORED")
    op.execute(f"CREATE INDEX {INDEX} ON adapter USING gin ({COLUMN} gin_trgm_ops)")
    for column in REPLACED:
        op.drop_index(f"ix_adapter_{column}_trgm", table_name="adapter")
    _side_table().downgrade()


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    _side_table().upgrade()
    for column in REPLACED:
        op.execute(f"CREATE INDEX ix_adapter_{column}_trgm ON adapter USING gin (lower({column}) gin_trgm_ops)")
    op.drop_index(INDEX, table_name="adapter")
    op.drop_column("adapter", COLUMN)
