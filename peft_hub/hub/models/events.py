"""What goes out: webhooks, the event outbox and its deliveries, and the
serving processes (deployments) that report the adapters they serve.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import utcnow


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
