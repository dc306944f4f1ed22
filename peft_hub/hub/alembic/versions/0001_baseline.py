"""initial schema: the in-house runner's version 5 (commit 2d07adf), frozen

Written out table by table rather than taken from ``models.py``, so a
later change of the models is a later revision, never a change of this one.
One function per table (in an order foreign keys allow), so that
``alembic/legacy.py`` can create the tables an older in-house database lacks.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _namespace() -> None:
    op.create_table(
        "namespace",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_namespace_name", "namespace", ["name"], unique=True)


def _membership() -> None:
    op.create_table(
        "membership",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["namespace.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["namespace.id"]),
        sa.PrimaryKeyConstraint("user_id", "org_id"),
    )


def _token() -> None:
    op.create_table(
        "token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("lookup", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("namespaces", sa.JSON(), nullable=True),
        _at("created_at"),
        sa.Column("name", sa.String(length=64), nullable=False),
        _at("expires_at", nullable=True),
        _at("last_used_at", nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["namespace.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_token_lookup", "token", ["lookup"], unique=True)
    op.create_index("ix_token_user_id", "token", ["user_id"], unique=False)


def _adapter() -> None:
    op.create_table(
        "adapter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("downloads", sa.BigInteger(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.Column("base_model", sa.String(), nullable=True),
        sa.Column("method", sa.String(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("max_rank", sa.Integer(), nullable=True),
        sa.Column("total_size", sa.BigInteger(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name"),
    )
    for column in ("base_model", "method", "name", "owner", "updated_at"):
        op.create_index(f"ix_adapter_{column}", "adapter", [column], unique=False)


def _revision() -> None:
    op.create_table(
        "revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("sha", sa.String(length=40), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        _at("created_at"),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("broken", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapter.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id", "sha"),
    )
    op.create_index("ix_revision_adapter_id", "revision", ["adapter_id"], unique=False)
    op.create_index("ix_revision_sha", "revision", ["sha"], unique=False)


def _revisionfile() -> None:
    op.create_table(
        "revisionfile",
        sa.Column("revision_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["revision_id"], ["revision.id"]),
        sa.PrimaryKeyConstraint("revision_id", "path"),
    )
    op.create_index("ix_revisionfile_sha256", "revisionfile", ["sha256"], unique=False)


def _tag() -> None:
    op.create_table(
        "tag",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=False),
        _at("updated_at"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapter.id"]),
        sa.ForeignKeyConstraint(["revision_id"], ["revision.id"]),
        sa.PrimaryKeyConstraint("adapter_id", "name"),
    )


def _eval() -> None:
    op.create_table(
        "eval",
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("dataset", sa.String(length=256), nullable=False),
        sa.Column("dataset_version", sa.String(length=128), nullable=True),
        sa.Column("split", sa.String(length=64), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=False),
        sa.Column("added_by", sa.String(), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["revision_id"], ["revision.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_eval_revision_id", "eval", ["revision_id"], unique=False)


def _lineageedge() -> None:
    op.create_table(
        "lineageedge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("child_revision_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_ref", sa.String(length=300), nullable=False),
        sa.Column("parent_adapter_id", sa.Integer(), nullable=True),
        sa.Column("parent_revision", sa.String(length=40), nullable=True),
        sa.Column("parent_sha256", sa.String(length=64), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["child_revision_id"], ["revision.id"]),
        sa.ForeignKeyConstraint(["parent_adapter_id"], ["adapter.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lineage_parent", "lineageedge", ["parent_adapter_id"], unique=False)
    op.create_index("ix_lineageedge_child_revision_id", "lineageedge", ["child_revision_id"], unique=False)


def _blobupload() -> None:
    op.create_table(
        "blobupload",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["user_id"], ["namespace.id"]),
        sa.PrimaryKeyConstraint("sha256", "user_id"),
    )


def _websession() -> None:
    op.create_table(
        "websession",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        _at("created_at"),
        _at("expires_at"),
        sa.ForeignKeyConstraint(["token_id"], ["token.id"]),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_websession_token_id", "websession", ["token_id"], unique=False)


def _auditevent() -> None:
    op.create_table(
        "auditevent",
        sa.Column("id", sa.Integer(), nullable=False),
        _at("at"),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("action", "actor", "at"):
        op.create_index(f"ix_auditevent_{column}", "auditevent", [column], unique=False)


def _blob() -> None:
    op.create_table(
        "blob",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checked_mtime", sa.Float(), nullable=True),
        sa.Column("corrupt", sa.Boolean(), nullable=False),
        _at("created_at"),
        _at("claimed_until", nullable=True),
        sa.PrimaryKeyConstraint("sha256"),
    )


#: Every table of the baseline, by name, parents before children.
TABLES = {
    "namespace": _namespace, "membership": _membership, "token": _token, "adapter": _adapter,
    "revision": _revision, "revisionfile": _revisionfile, "tag": _tag, "eval": _eval,
    "lineageedge": _lineageedge, "blobupload": _blobupload, "websession": _websession,
    "auditevent": _auditevent, "blob": _blob,
}


def upgrade() -> None:
    for create in TABLES.values():
        create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
