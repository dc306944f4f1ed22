"""Who: namespaces (users and organisations), memberships and API tokens.

A namespace's ``name_key`` is kept by a mapper event on every write, so no
caller can forget it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, event
from sqlmodel import Field, SQLModel

from peft_hub.hub.models.base import name_key, utcnow


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


@event.listens_for(Namespace, "before_insert")
@event.listens_for(Namespace, "before_update")
def _namespace_key(mapper: Any, connection: Any, row: Namespace) -> None:
    """``name_key`` follows ``name`` on every write, so no caller can forget it."""
    row.name_key = name_key(row.name)
