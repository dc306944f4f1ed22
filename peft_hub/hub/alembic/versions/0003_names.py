"""Case-insensitive names: ``name_key`` on adapters and namespaces.

A name is stored as the user typed it (``Llama-3-LoRA``) and found whatever
the case: ``name_key`` holds the lowercased form, unique, so a second adapter
or namespace that differs only by case is refused. Names are ASCII (see
``adapter.NAME_RE``), so SQL's ``lower()`` and Python's ``str.lower()`` agree.
Existing rows are filled from their names, which were lowercase-only until
now, so no two of them collide.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: table -> (the SQL that computes its key, the key's length)
KEYS = {
    "adapter": ("lower(owner) || '/' || lower(name)", 129),
    "namespace": ("lower(name)", 64),
}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, (expression, length) in KEYS.items():
        # NOT NULL from the start, with a default for the rows already there:
        # SQLite adds such a column in place, where a batch rebuild of the table
        # would trip over the foreign keys that point at it.
        op.add_column(table, sa.Column("name_key", sa.String(length=length), nullable=False, server_default=""))
        op.execute(f"UPDATE {table} SET name_key = {expression}")
        if not sqlite:  # SQLite cannot drop a default in place; the app always sets the key
            op.alter_column(table, "name_key", server_default=None)
        op.create_index(f"ix_{table}_name_key", table, ["name_key"], unique=True)


def downgrade() -> None:
    for table in KEYS:
        op.drop_index(f"ix_{table}_name_key", table_name=table)
        op.drop_column(table, "name_key")
