"""The search summaries emptied when what they count is truncated (PostgreSQL).

``TRUNCATE`` fires no row trigger, so the triggers of 0008 and 0009 never see
an operator's reset of ``adapter`` (or a restore that truncates first) and
the summaries kept counting rows that were gone: every count and facet read
from them was wrong until a rebuild. Statement triggers now empty
``adapter_count``, ``adapter_owner_count`` and ``adapter_tag_count`` after a
``TRUNCATE adapter``, and ``adapter_tag_count`` after a ``TRUNCATE tag``, in
the same transaction. SQLite has no ``TRUNCATE``: its ``DELETE`` without a
``WHERE`` fires the row triggers whenever a table has any.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The table truncated, the trigger (and function) it fires, and the summaries that function empties.
EMPTIED = {
    "adapter": ("adapter_summaries_truncate", ("adapter_count", "adapter_owner_count", "adapter_tag_count")),
    "tag": ("tag_summary_truncate", ("adapter_tag_count",)),
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table, (name, summaries) in EMPTIED.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   f"BEGIN\n    TRUNCATE {', '.join(summaries)};\n    RETURN NULL;\nEND $$")
        op.execute(f"CREATE TRIGGER {name} AFTER TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {name}()")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table, (name, _) in EMPTIED.items():
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(f"DROP FUNCTION {name}()")
