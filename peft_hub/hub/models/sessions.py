"""Sign-ins and the audit trail: browser sessions, and who did what.

Kept apart from :mod:`.accounts` so the tables are defined in the order the
single ``models.py`` defined them, which ``create_all`` follows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import utcnow


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
