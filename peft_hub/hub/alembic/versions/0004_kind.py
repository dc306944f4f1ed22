"""Repo kinds: ``kind`` on adapters (``adapter`` or ``model``).

The ``adapter`` table holds every repo, base models included: renaming it
would touch every query and foreign key for a word, so it keeps its name and
``kind`` says what a row holds. Existing rows are adapters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a default for the rows already there, added in place (see 0003).
    op.add_column("adapter", sa.Column("kind", sa.String(length=8), nullable=False, server_default="adapter"))
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot drop a default in place; the app always sets it
        op.alter_column("adapter", "kind", server_default=None)
    op.create_index("ix_adapter_kind", "adapter", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_adapter_kind", table_name="adapter")
    op.drop_column("adapter", "kind")
