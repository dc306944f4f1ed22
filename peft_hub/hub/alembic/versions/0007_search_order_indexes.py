"""Search indexes for PostgreSQL's plans: the rank sort in full order, and visibility by id.

``ix_adapter_rank_id`` (rank, id) replaces ``ix_adapter_rank`` (rank): search
sorts by the column and then by id, and with the id in the index PostgreSQL
reads the rank sort in its final order and stops at the page, instead of
reading and sorting every row of a tied rank (SQLite's rank index already
ended with the rowid). ``ix_adapter_visible`` (id, private, method) answers
the visibility clause for rows picked by id (the tag filter's ``adapter.id IN
(...)``) from the index alone: the count merges it with the tag index
instead of reading the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_adapter_rank_id", "adapter", ["rank", "id"])
    op.drop_index("ix_adapter_rank", table_name="adapter")
    op.create_index("ix_adapter_visible", "adapter", ["id", "private", "method"])


def downgrade() -> None:
    op.drop_index("ix_adapter_visible", table_name="adapter")
    op.create_index("ix_adapter_rank", "adapter", ["rank"])
    op.drop_index("ix_adapter_rank_id", table_name="adapter")
