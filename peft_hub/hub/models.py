"""Database tables and API models (SQLModel).

Following SQLModel's rule, API models inherit only from data models, never
from table models: ``XBase`` holds shared fields, ``X(XBase, table=True)`` is
the table, and ``XPublic`` is what the API returns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, event, func
from sqlmodel import Field, SQLModel

from peft_hub.errors import PeftHubError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def name_key(*parts: str) -> str:
    """The case-insensitive key of a name or an ``owner/name`` (names are ASCII)."""
    return "/".join(parts).lower()


class _HasId(Protocol):
    id: int | None


def pk(row: _HasId) -> int:
    """A stored row's primary key as an ``int`` (the ``None`` the table type
    allows is only there before the first flush)."""
    if row.id is None:
        raise PeftHubError(f"{type(row).__name__} has no id yet: flush it first")
    return row.id


class Namespace(SQLModel, table=True):
    """A user or an organisation; owns adapters."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    #: ``name`` lowercased: names keep their case and are found, and unique, whatever the case (migration 0003).
    name_key: str = Field(default="", index=True, unique=True, max_length=64)
    kind: str = Field(default="user", max_length=8)  # user | org
    is_admin: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Membership(SQLModel, table=True):
    """A user's membership of an organisation."""

    user_id: int = Field(foreign_key="namespace.id", primary_key=True)
    org_id: int = Field(foreign_key="namespace.id", primary_key=True)


class Token(SQLModel, table=True):
    """An API token. Only its sha256 is stored; ``lookup`` is a non-secret prefix."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="namespace.id", index=True)
    lookup: str = Field(index=True, unique=True, max_length=16)
    token_hash: str = Field(max_length=64)
    scope: str = Field(max_length=8)  # read | write | admin
    namespaces: list[str] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)
    #: A label chosen at creation, shown by ``token ls``.
    name: str = Field(default="", max_length=64)
    #: After this instant the token is refused; None: it does not expire.
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


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


class BlobUpload(SQLModel, table=True):
    """A receipt: ``user_id`` proved it holds the bytes of blob ``sha256``.

    Blobs are shared by sha256 across users, but access is not: a commit may
    name a blob only when its author has a receipt, or can already read a
    revision that holds the blob (see ``hub.possession``).
    """

    sha256: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="namespace.id", primary_key=True)
    size: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class WebSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds only a random id; this row holds
    the sha256 of that id and the token it acts with. Sign-out deletes it."""

    id_hash: str = Field(primary_key=True, max_length=64)
    token_id: int = Field(foreign_key="token.id", index=True)
    csrf: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class AuditEvent(SQLModel, table=True):
    """Who did what, when and from where: pushes, tag moves, deletes, tokens,
    memberships, gc and bursts of failed sign-ins."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(default="", max_length=64, index=True)
    action: str = Field(max_length=32, index=True)
    target: str = Field(default="", max_length=300)
    client: str = Field(default="", max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Blob(SQLModel, table=True):
    """One row per stored blob: the point where publish and gc agree.

    Both take the row's write lock first (an upsert that updates it), so a gc
    can never delete a blob between a publish's check and its commit, and a
    publish that comes after a gc sees the blob gone. ``checked_mtime`` is the
    store's modification time when the bytes last verified: a local file
    changed since is treated as unverified, so the next upload repairs it.
    ``corrupt`` is set by ``fsck`` when the stored bytes do not verify.
    ``claimed_until`` is a pending push's lease, which gc respects.
    """

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=BigInteger)
    checked_mtime: float | None = None
    corrupt: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    #: A pending push's lease: preupload sets it for every blob it plans, and
    #: gc keeps the blob until then (the row may precede the blob's upload).
    claimed_until: datetime | None = None


class Webhook(SQLModel, table=True):
    """A URL that receives signed events of one namespace (``name`` None) or
    one adapter. ``secret`` is kept as given, since deliveries are signed
    with it; the API never returns it."""

    id: int | None = Field(default=None, primary_key=True)
    #: The creator: a delivery goes out only for adapters this user can read.
    user_id: int = Field(foreign_key="namespace.id", index=True)
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=256)
    owner: str = Field(index=True, max_length=64)
    name: str | None = Field(default=None, max_length=64)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)


class WebhookEvent(SQLModel, table=True):
    """The outbox: one change (push, tag move, delete), written in the
    transaction that made it, so it exists exactly when the change does."""

    id: str = Field(primary_key=True, max_length=36)  # a uuid, the body's "id"
    kind: str = Field(max_length=8)  # tag | push | delete
    owner: str = Field(max_length=64)
    name: str = Field(max_length=64)
    tag: str | None = Field(default=None, max_length=64)
    revision: str | None = Field(default=None, max_length=40)
    previous: str | None = Field(default=None, max_length=40)
    #: The adapter's visibility at the change: decides delivery once it is deleted.
    private: bool = False
    #: ISO-8601 UTC, exactly as the body carries it.
    timestamp: str = Field(max_length=40)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class WebhookDelivery(SQLModel, table=True):
    """One event to one hook: what the worker sends, retries and records.

    ``next_attempt_at`` is also the claim: a worker that takes a row moves it
    past the time one send can take, so another worker (or replica) leaves
    it, and a worker killed mid-send leaves a row that comes due again.
    """

    __table_args__ = (Index("ix_webhookdelivery_due", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True, max_length=36)  # a uuid, the X-PeftHub-Delivery header
    webhook_id: int = Field(foreign_key="webhook.id", index=True)
    event_id: str = Field(foreign_key="webhookevent.id", index=True, max_length=36)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed | skipped
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_error: str = Field(default="", max_length=500)
    response_code: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Deployment(SQLModel, table=True):
    """A serving process (a vLLM server) and the adapters it reports serving."""

    server_id: str = Field(primary_key=True, max_length=64)
    #: Who registered it: only they (or an admin) see, change or remove it.
    user_id: int = Field(foreign_key="namespace.id", index=True)
    url: str = Field(max_length=2048)
    base_model: str = Field(max_length=300)
    #: ``[{"ref", "repo", "ref_name", "revision"}]`` as last reported.
    adapters: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)


#: Search (migration 0005): the owner filter and visibility match ``lower(owner)``, the method filter
#: ``upper(method)``; on PostgreSQL, ``q=``'s substring LIKEs use trigram GIN indexes (SQLite has none: 0005
#: makes them on PostgreSQL only).
_adapters = SQLModel.metadata.tables["adapter"]
Index("ix_adapter_owner_lower", func.lower(_adapters.c.owner))
Index("ix_adapter_method_upper", func.upper(_adapters.c.method))
for _column in ("name", "owner", "base_model", "description"):
    Index(f"ix_adapter_{_column}_trgm", func.lower(_adapters.c[_column]).label(f"{_column}_lower"),
          postgresql_using="gin", postgresql_ops={f"{_column}_lower": "gin_trgm_ops"}).ddl_if(dialect="postgresql")


@event.listens_for(Namespace, "before_insert")
@event.listens_for(Namespace, "before_update")
def _namespace_key(mapper: Any, connection: Any, row: Namespace) -> None:
    """``name_key`` follows ``name`` on every write, so no caller can forget it."""
    row.name_key = name_key(row.name)


@event.listens_for(Adapter, "before_insert")
@event.listens_for(Adapter, "before_update")
def _adapter_key(mapper: Any, connection: Any, row: Adapter) -> None:
    row.name_key = name_key(row.owner, row.name)
