"""Search indexes: each filter, facet and sort the catalog and ``/api/adapters`` use.

The facet indexes lead with the facet's column and carry the visibility
clause's columns (``private``, ``method``, ``owner``) and the rank range's,
so a facet's GROUP BY (and a count) reads one index in order, not the table. ``lower(owner)`` serves the
owner filter and a signed-in user's visibility clause, ``upper(method)`` the
method filter. On PostgreSQL,
``pg_trgm`` GIN indexes on ``lower()`` of the four text fields answer
``q=``'s ``LIKE '%x%'`` with its exact semantics (the extension is trusted
since PostgreSQL 13: the database's owner may create it). SQLite has no
equivalent index type reachable from a plain table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_adapter_facet_base_model": ["base_model", "private", "method", "owner", "rank", "max_rank"],
    "ix_adapter_facet_method": ["method", "private", "owner", "rank", "max_rank"],
    "ix_adapter_facet_owner": ["owner", "private", "method", "rank", "max_rank"],
    "ix_adapter_facet_kind": ["kind", "private", "method", "owner", "rank", "max_rank"],
    "ix_adapter_downloads": ["downloads"],
    "ix_adapter_rank": ["rank"],
    "ix_adapter_total_size": ["total_size"],
}
TRIGRAM = ("name", "owner", "base_model", "description")


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "adapter", columns)
    op.create_index("ix_adapter_owner_lower", "adapter", [sa.text("lower(owner)")])
    op.create_index("ix_adapter_method_upper", "adapter", [sa.text("upper(method)")])
    op.create_index("ix_tag_name_adapter", "tag", ["name", "adapter_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in TRIGRAM:
            op.execute(f"CREATE INDEX ix_adapter_{column}_trgm ON adapter USING gin (lower({column}) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in TRIGRAM:
            op.drop_index(f"ix_adapter_{column}_trgm", table_name="adapter")
    op.drop_index("ix_tag_name_adapter", table_name="tag")
    op.drop_index("ix_adapter_method_upper", table_name="adapter")
    op.drop_index("ix_adapter_owner_lower", table_name="adapter")
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="adapter")
