"""What was pushed: revisions, their files, tags, evals and lineage.

``Eval`` follows SQLModel's rule: ``EvalBase`` holds the shared fields,
``Eval(EvalBase, table=True)`` is the table, and ``EvalCreate`` and
``EvalPublic`` are API models that inherit only from the data model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import utcnow


class Revision(SQLModel, table=True):
    """An immutable pushed revision; ``sha`` hashes its manifest."""

    __table_args__ = (UniqueConstraint("adapter_id", "sha"),)

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: int = Field(foreign_key="adapter.id", index=True)
    sha: str = Field(index=True, max_length=40)
    message: str = ""
    author: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    #: Set by ``fsck --repair`` when a file's blob is missing or its bytes do not
    #: verify: ``{"checked_at": iso, "files": [{"path", "sha256", "problem"}]}``;
    #: None when the last check found it whole (migration 5).
    broken: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))


class RevisionFile(SQLModel, table=True):
    """One file of a revision, pointing at a blob by sha256."""

    revision_id: int = Field(foreign_key="revision.id", primary_key=True)
    path: str = Field(primary_key=True, max_length=255)
    sha256: str = Field(index=True, max_length=64)
    size: int = Field(sa_type=BigInteger)


class Tag(SQLModel, table=True):
    """A mutable name for a revision; ``main`` follows the newest push."""

    __table_args__ = (Index("ix_tag_name_adapter", "name", "adapter_id"),)  # search's tag filter (0005)

    adapter_id: int = Field(foreign_key="adapter.id", primary_key=True)
    name: str = Field(primary_key=True, max_length=64)
    revision_id: int = Field(foreign_key="revision.id")
    updated_at: datetime = Field(default_factory=utcnow)


class EvalBase(SQLModel):
    metric: str = Field(max_length=128)
    value: float
    dataset: str = Field(max_length=256)
    dataset_version: str | None = Field(default=None, max_length=128)
    split: str | None = Field(default=None, max_length=64)
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Eval(EvalBase, table=True):
    """An evaluation result attached to a revision."""

    id: int | None = Field(default=None, primary_key=True)
    revision_id: int = Field(foreign_key="revision.id", index=True)
    added_by: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class EvalCreate(EvalBase):
    pass


class EvalPublic(EvalBase):
    revision: str
    added_by: str
    created_at: datetime


class LineageEdge(SQLModel, table=True):
    """A composed revision's parent: recorded from the lineage its file carries."""

    __table_args__ = (Index("ix_lineage_parent", "parent_adapter_id"),)

    id: int | None = Field(default=None, primary_key=True)
    child_revision_id: int = Field(foreign_key="revision.id", index=True)
    position: int = 0
    parent_ref: str = Field(max_length=300)
    parent_adapter_id: int | None = Field(default=None, foreign_key="adapter.id")
    parent_revision: str | None = Field(default=None, max_length=40)
    parent_sha256: str | None = Field(default=None, max_length=64)
    weight: float | None = None
    method: str = Field(default="", max_length=32)
