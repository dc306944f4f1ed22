"""Index for the summary counts of one base model.

``ix_adapter_count_base_model`` (base_model, method) on ``adapter_count``
(0008): its primary key starts with ``kind``, so a count filtered by base
model and no kind (the API's and the catalog's usual question) read the
whole table, which grows with the variety of adapters (7,500 keys at
100,000 adapters, 4,000 at 10,000). With the index it reads that base
model's keys alone (0.5-0.75 → 0.05 ms at 100,000 adapters).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-20
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_adapter_count_base_model", "adapter_count", ["base_model", "method"])


def downgrade() -> None:
    op.drop_index("ix_adapter_count_base_model", table_name="adapter_count")
