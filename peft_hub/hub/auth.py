"""API tokens and who may do what.

Tokens look like ``phub_<lookup><secret>``. The lookup part finds the row;
only the token's sha256 is stored, and it is compared in constant time.

Three rules hold everywhere:

- a principal's scope never exceeds its user's role: a non-admin user's
  ``admin``-scope token acts with ``write`` at most;
- a token's namespace limits bind every scope, admin included;
- an expired token is refused exactly as a revoked one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from peft_hub.errors import AuthenticationError, PermissionDeniedError
from peft_hub.hub.models import Adapter, Membership, Namespace, Token, utcnow

log = logging.getLogger("peft_hub.hub")

PREFIX = "phub_"
LOOKUP_LEN = 12
SCOPES = ("read", "write", "admin")
#: ``last_used_at`` is written at most this often per token, so reads do not all write.
TOUCH_EVERY = timedelta(minutes=1)
INVALID = "invalid, expired or revoked token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token string."""
    return PREFIX + secrets.token_hex(LOOKUP_LEN // 2) + secrets.token_urlsafe(32)


def lookup_of(token: str) -> str | None:
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + LOOKUP_LEN + 16:
        return None
    return token[len(PREFIX): len(PREFIX) + LOOKUP_LEN]


def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones; the hub writes UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def is_expired(row: Token, now: datetime | None = None) -> bool:
    return row.expires_at is not None and as_utc(row.expires_at) <= (now or utcnow())


def scope_rank(scope: str) -> int:
    return SCOPES.index(scope)


def highest_scope(user: Namespace) -> str:
    """The highest scope a token of ``user`` may carry: its role."""
    return "admin" if user.is_admin else "write"


@dataclass
class Principal:
    """The caller: a user namespace, the token's effective scope and namespace limits."""

    user: Namespace
    scope: str
    namespaces: list[str] | None = None
    orgs: set[str] = field(default_factory=set)
    #: The token's row id and expiry (None for principals built without a token row).
    token_id: int | None = None
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        """An admin user acting with an admin-scope token."""
        return self.user.is_admin and self.scope == "admin"

    def allows(self, scope: str) -> bool:
        return scope_rank(self.scope) >= scope_rank(scope)

    def in_limits(self, owner: str) -> bool:
        return self.namespaces is None or owner in self.namespaces

    def owns(self, owner: str) -> bool:
        """May act on namespace ``owner``: within the token's limits, and the
        user's own, one of its organisations', or any for an admin."""
        return self.in_limits(owner) and (self.is_admin or owner == self.user.name or owner in self.orgs)


def authenticate(session: Session, token: str) -> Principal:
    """Turn a presented token into a principal, or raise AuthenticationError."""
    lookup = lookup_of(token)
    row = session.exec(select(Token).where(Token.lookup == lookup)).first() if lookup else None
    valid = row is not None and hmac.compare_digest(row.token_hash, hash_token(token))
    if not valid or is_expired(row):
        raise AuthenticationError(INVALID)
    return principal_for(session, row)


def principal_for(session: Session, row: Token) -> Principal:
    """The principal a valid, unexpired token row acts as (its scope capped by the user's role)."""
    user = session.get(Namespace, row.user_id)
    if user is None:
        raise AuthenticationError(INVALID)
    orgs = session.exec(
        select(Namespace.name).join(Membership, Membership.org_id == Namespace.id).where(Membership.user_id == row.user_id)
    ).all()
    scope = row.scope if row.scope in SCOPES else "read"
    if scope_rank(scope) > scope_rank(highest_scope(user)):
        scope = highest_scope(user)
    touch(session, row)
    return Principal(user=user, scope=scope, namespaces=row.namespaces, orgs=set(orgs), token_id=row.id,
                     expires_at=as_utc(row.expires_at))


def touch(session: Session, row: Token) -> None:
    """Record that the token was used, at most once per TOUCH_EVERY.

    The write goes through its own short transaction, so a read stays a read
    (holding no row lock for the length of the request) and a failed request
    still counts as a use. Call it before the request's session writes.
    """
    now = utcnow()
    last = as_utc(row.last_used_at)
    if last is not None and now - last < TOUCH_EVERY:
        return
    cutoff = now - TOUCH_EVERY
    try:
        with session.get_bind().begin() as conn:
            conn.execute(
                update(Token).where(Token.id == row.id, or_(Token.last_used_at.is_(None), Token.last_used_at < cutoff))
                .values(last_used_at=now)
            )
    except SQLAlchemyError as exc:  # bookkeeping: never fail the request over it
        log.warning("could not record the use of token %s: %s", row.id, exc)


def can_read(principal: Principal | None, adapter: Adapter) -> bool:
    """Public adapters are readable by anyone; private ones by their owners."""
    return not adapter.private or (principal is not None and principal.owns(adapter.owner))


def require_scope(principal: Principal | None, scope: str) -> Principal:
    """The principal, if it has at least ``scope``; else a 401 or 403."""
    if principal is None:
        raise AuthenticationError(f"this needs a token with the {scope!r} scope; run `peft-hub login`")
    if not principal.allows(scope):
        raise PermissionDeniedError(f"your token has the {principal.scope!r} scope; this needs {scope!r}")
    return principal


def require_write(principal: Principal | None, owner: str) -> Principal:
    """A principal allowed to write into namespace ``owner``."""
    principal = require_scope(principal, "write")
    if not principal.owns(owner):
        raise PermissionDeniedError(f"you cannot write to namespace {owner!r}")
    return principal


def require_admin(principal: Principal | None, *namespaces: str) -> Principal:
    """An admin user with an admin-scope token, allowed to act on ``namespaces``.

    With no namespaces the action is hub-wide (gc, the audit log), and the
    token must carry no namespace limits at all.
    """
    principal = require_scope(principal, "admin")
    if not principal.user.is_admin:
        raise PermissionDeniedError(f"this needs an admin user; {principal.user.name!r} is not one")
    if not namespaces and principal.namespaces is not None:
        raise PermissionDeniedError("this acts on the whole hub; your token is limited to "
                                    f"{', '.join(principal.namespaces) or 'no namespaces'}")
    for name in namespaces:
        if not principal.in_limits(name):
            raise PermissionDeniedError(f"your token is limited to {', '.join(principal.namespaces) or 'no namespaces'}"
                                        f" and cannot act on {name!r}")
    return principal
