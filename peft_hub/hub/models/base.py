"""What every table module shares: the clock, name keys and primary keys.

Nothing here defines a table, so each of :mod:`peft_hub.hub.models`'s
modules can import it without importing another's tables.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

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
