"""Repos and what search reads of them: the ``adapter`` table, its search
indexes, and the summary tables that count adapters by search key.

An adapter's ``name_key`` is kept by a mapper event on every write, and the
summary tables by the triggers of migrations 0008 and 0009.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, event, func
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import name_key, utcnow


class Adapter(SQLModel, table=True):
    """An ``owner/name`` repo; search fields mirror its ``main`` revision.

    Base models live here too, told apart by ``kind``: the table keeps the
    name it had when it held adapters only (migration 0004 says why).
    """

    __table_args__ = (
        UniqueConstraint("owner", "name"),
        # Search (migration 0005): each facet's GROUP BY with the visibility clause, covered; filters; sorts.
        Index("ix_adapter_facet_base_model", "base_model", "private", "method", "owner", "rank", "max_rank"),
        Index("ix_adapter_facet_method", "method", "private", "owner", "rank", "max_rank"),
        Index("ix_adapter_facet_owner", "owner", "private", "method", "rank", "max_rank"),
        Index("ix_adapter_facet_kind", "kind", "private", "method", "owner", "rank", "max_rank"),
        Index("ix_adapter_downloads", "downloads"),
        Index("ix_adapter_rank_id", "rank", "id"),  # 0007
        Index("ix_adapter_visible", "id", "private", "method"),  # 0007
        Index("ix_adapter_base_model_updated", "base_model", "updated_at"),  # 0010: a base model's newest first
        Index("ix_adapter_total_size", "total_size"),
    )

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(index=True, max_length=64)
    name: str = Field(index=True, max_length=64)
    #: ``owner/name`` lowercased (``name_key(owner, name)``): unique, what lookups match (migration 0003).
    name_key: str = Field(default="", index=True, unique=True, max_length=129)
    private: bool = False
    #: ``adapter`` or ``model`` (see ``peft_hub.repo_kinds``), decided by the first push (migration 0004).
    kind: str = Field(default="adapter", index=True, max_length=8)
    downloads: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    # Denormalised from the revision ``main`` points at, for search.
    base_model: str | None = Field(default=None, index=True)
    method: str | None = Field(default=None, index=True)
    rank: int | None = None
    max_rank: int | None = None
    total_size: int = Field(default=0, sa_type=BigInteger)
    target_modules: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    description: str = ""


#: How the summary tables (migration 0008) key a NULL rank: past every rank a query can ask for, so that
#: ``rank <= x`` and ``max_rank >= x`` stay false for it, as for NULL, whenever ``abs(x) < NO_RANK``.
NO_RANK = 2**62


class AdapterCount(SQLModel, table=True):
    """How many adapters share each search key: what counts and facets read
    instead of every matching row (migration 0008, whose triggers keep it
    exact in the transaction of every write to ``adapter``, whoever makes it).

    Adapters without a method are not counted (search never shows them). A
    NULL base model is keyed ``''``, a NULL ``rank`` ``NO_RANK`` and a NULL
    ``max_rank`` ``-NO_RANK``; a key whose count reaches 0 is deleted.
    """

    __tablename__ = "adapter_count"
    __table_args__ = (Index("ix_adapter_count_base_model", "base_model", "method"),)  # 0014

    kind: str = Field(primary_key=True, max_length=8)
    base_model: str = Field(primary_key=True)
    method: str = Field(primary_key=True)
    rank: int = Field(primary_key=True, sa_type=BigInteger)
    max_rank: int = Field(primary_key=True, sa_type=BigInteger)
    private: bool = Field(primary_key=True)
    n: int = Field(sa_type=BigInteger)


class AdapterOwnerCount(SQLModel, table=True):
    """:class:`AdapterCount` by owner: the owner facet, and counts filtered by owner (migration 0008)."""

    __tablename__ = "adapter_owner_count"

    kind: str = Field(primary_key=True, max_length=8)
    owner: str = Field(primary_key=True, max_length=64)
    method: str = Field(primary_key=True)
    private: bool = Field(primary_key=True)
    n: int = Field(sa_type=BigInteger)


class AdapterTagCount(SQLModel, table=True):
    """:class:`AdapterCount` by tag name: how many adapters with a method carry
    each tag, by their kind, method and visibility (migration 0009, whose
    triggers on ``tag`` and ``adapter`` keep it a live ``tag JOIN adapter``)."""

    __tablename__ = "adapter_tag_count"

    tag: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=8)
    method: str = Field(primary_key=True)
    private: bool = Field(primary_key=True)
    n: int = Field(sa_type=BigInteger)


class AdapterTagFacetCount(SQLModel, table=True):
    """:class:`AdapterTagCount` by one facet's value: how many adapters with a
    method carry each tag, by their base model (``facet`` ``'base_model'``, a
    NULL keyed ``''``) or owner (``'owner'``), kind, method and visibility
    (migration 0013, whose triggers keep it a live ``tag JOIN adapter``)."""

    __tablename__ = "adapter_tag_facet_count"
    __table_args__ = {"sqlite_with_rowid": False}

    tag: str = Field(primary_key=True, max_length=64)
    facet: str = Field(primary_key=True, max_length=16)
    value: str = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=8)
    method: str = Field(primary_key=True)
    private: bool = Field(primary_key=True)
    n: int = Field(sa_type=BigInteger)


class AdapterOwnerRankCount(SQLModel, table=True):
    """:class:`AdapterOwnerCount` by rank instead of kind and method: the owner
    facet beside a rank range (migration 0013; ranks keyed as in :class:`AdapterCount`)."""

    __tablename__ = "adapter_owner_rank_count"
    __table_args__ = {"sqlite_with_rowid": False}

    private: bool = Field(primary_key=True)
    owner: str = Field(primary_key=True, max_length=64)
    rank: int = Field(primary_key=True, sa_type=BigInteger)
    max_rank: int = Field(primary_key=True, sa_type=BigInteger)
    n: int = Field(sa_type=BigInteger)


#: Search (migration 0005): the owner filter and visibility match ``lower(owner)``, the method filter
#: ``upper(method)``; on PostgreSQL the catalog's type-ahead matches prefixes of the owner and the base model
#: through trigram GIN indexes (SQLite has none: 0005 makes them on PostgreSQL only). ``q=`` reads the text
#: body of 0015 there, a generated column with its own trigram index, which is no model.
_adapters = SQLModel.metadata.tables["adapter"]
Index("ix_adapter_owner_lower", func.lower(_adapters.c.owner))
Index("ix_adapter_method_upper", func.upper(_adapters.c.method))
for _column in ("owner", "base_model"):
    Index(f"ix_adapter_{_column}_trgm", func.lower(_adapters.c[_column]).label(f"{_column}_lower"),
          postgresql_using="gin", postgresql_ops={f"{_column}_lower": "gin_trgm_ops"}).ddl_if(dialect="postgresql")


@event.listens_for(Adapter, "before_insert")
@event.listens_for(Adapter, "before_update")
def _adapter_key(mapper: Any, connection: Any, row: Adapter) -> None:
    row.name_key = name_key(row.owner, row.name)
