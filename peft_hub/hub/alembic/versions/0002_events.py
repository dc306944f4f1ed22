"""Webhooks, the event outbox and its deliveries, and the deployments registry.

Written out column by column (not taken from ``models.py``), matching
``Webhook``, ``WebhookEvent``, ``WebhookDelivery`` and ``Deployment``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhook",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=256), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("events", sa.JSON(), nullable=True),
        _at("created_at"),
        sa.ForeignKeyConstraint(["user_id"], ["namespace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_user_id", "webhook", ["user_id"])
    op.create_index("ix_webhook_owner", "webhook", ["owner"])

    op.create_table(
        "webhookevent",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=True),
        sa.Column("revision", sa.String(length=40), nullable=True),
        sa.Column("previous", sa.String(length=40), nullable=True),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("timestamp", sa.String(length=40), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhookevent_created_at", "webhookevent", ["created_at"])

    op.create_table(
        "webhookdelivery",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _at("next_attempt_at"),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        sa.Column("response_code", sa.Integer(), nullable=True),
        _at("created_at"),
        _at("finished_at", nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["webhookevent.id"]),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhook.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhookdelivery_webhook_id", "webhookdelivery", ["webhook_id"])
    op.create_index("ix_webhookdelivery_event_id", "webhookdelivery", ["event_id"])
    op.create_index("ix_webhookdelivery_due", "webhookdelivery", ["status", "next_attempt_at"])

    op.create_table(
        "deployment",
        sa.Column("server_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("adapters", sa.JSON(), nullable=True),
        _at("created_at"),
        _at("last_seen"),
        sa.ForeignKeyConstraint(["user_id"], ["namespace.id"]),
        sa.PrimaryKeyConstraint("server_id"),
    )
    op.create_index("ix_deployment_user_id", "deployment", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_deployment_user_id", table_name="deployment")
    op.drop_table("deployment")
    for index in ("ix_webhookdelivery_due", "ix_webhookdelivery_event_id", "ix_webhookdelivery_webhook_id"):
        op.drop_index(index, table_name="webhookdelivery")
    op.drop_table("webhookdelivery")
    op.drop_index("ix_webhookevent_created_at", table_name="webhookevent")
    op.drop_table("webhookevent")
    op.drop_index("ix_webhook_owner", table_name="webhook")
    op.drop_index("ix_webhook_user_id", table_name="webhook")
    op.drop_table("webhook")
