"""API tokens and who may do what.

Tokens look like ``phub_<lookup><secret>``. The lookup part finds the row;
only the token's sha256 is stored, and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from sqlmodel import Session, select

from peft_hub.errors import AuthenticationError, PermissionDeniedError
from peft_hub.hub.models import Adapter, Membership, Namespace, Token

PREFIX = "phub_"
LOOKUP_LEN = 12
SCOPES = ("read", "write", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token string."""
    return PREFIX + secrets.token_hex(LOOKUP_LEN // 2) + secrets.token_urlsafe(32)


def lookup_of(token: str) -> str | None:
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + LOOKUP_LEN + 16:
        return None
    return token[len(PREFIX): len(PREFIX) + LOOKUP_LEN]


@dataclass
class Principal:
    """The caller: a user namespace, the token's scope and namespace limits."""

    user: Namespace
    scope: str
    namespaces: list[str] | None = None
    orgs: set[str] = field(default_factory=set)

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin and self.scope == "admin"

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def in_limits(self, owner: str) -> bool:
        return self.namespaces is None or owner in self.namespaces

    def owns(self, owner: str) -> bool:
        return self.is_admin or (self.in_limits(owner) and (owner == self.user.name or owner in self.orgs))


def authenticate(session: Session, token: str) -> Principal:
    """Turn a presented token into a principal, or raise AuthenticationError."""
    lookup = lookup_of(token)
    row = session.exec(select(Token).where(Token.lookup == lookup)).first() if lookup else None
    if row is None or not hmac.compare_digest(row.token_hash, hash_token(token)):
        raise AuthenticationError("invalid or revoked token")
    user = session.get(Namespace, row.user_id)
    orgs = session.exec(
        select(Namespace.name).join(Membership, Membership.org_id == Namespace.id).where(Membership.user_id == row.user_id)
    ).all()
    return Principal(user=user, scope=row.scope, namespaces=row.namespaces, orgs=set(orgs))


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
