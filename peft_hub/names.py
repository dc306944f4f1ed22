"""Names in the registry: ``owner/name`` ids and the namespaces they live in.

A name keeps the case it was typed in and is found whatever the case (the
hub keys lookups on the lowercased name); only ASCII is allowed, so that
lowercasing can never make two different names collide.
"""

from __future__ import annotations

import re

from peft_hub.errors import InvalidNameError

#: Names the web catalog and the API use for themselves.
RESERVED_NAMES = frozenset({"api", "static", "compose", "login", "logout"})
#: ``\Z``, not ``$``: a ``$`` also matches before a final newline.
#: ASCII letters of either case: a name keeps the case it was typed in and is
#: found whatever the case (ASCII, so lowercasing it cannot merge two strangers'
#: names the way Unicode case folding could, e.g. "K" and the Kelvin sign).
NAME_RE = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?\Z")


def shown(value: object, limit: int = 80) -> str:
    """A user's value for an error message: repr'd (so control characters show
    escaped) and cut short, so a megabyte of input makes a short message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_namespace(part: str, *, what: str = "name") -> str:
    """Check one half of ``owner/name``; return it unchanged."""
    if not isinstance(part, str) or not NAME_RE.fullmatch(part) or ".." in part:
        raise InvalidNameError(
            f"invalid {what} {shown(part)}: use 1-64 ASCII letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, and no '..'"
        )
    if what in ("owner", "namespace", "organisation", "user") and part.lower() in RESERVED_NAMES:
        raise InvalidNameError(f"{part!r} is reserved and cannot be a namespace")
    return part


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Split and check an ``owner/name`` id (already URL-decoded).

    Returns:
        ``(owner, name)``.
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2:
        raise InvalidNameError(f"invalid adapter id {shown(repo_id)}: expected 'owner/name'")
    return validate_namespace(parts[0], what="owner"), validate_namespace(parts[1], what="name")
