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
from typing import cast, overload

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from peft_hub.errors import AuthenticationError, PermissionDeniedError
from peft_hub.hub import cache
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


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones; the hub writes UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def is_expired(row: Token, now: datetime | None = None) -> bool:
    expires = as_utc(row.expires_at)
    return expires is not None and expires <= (now or utcnow())


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
        return self.namespaces is None or owner.lower() in {n.lower() for n in self.namespaces}

    def owned_namespaces(self) -> set[str] | None:
        """The namespaces this principal may act on (None: every one): within
        the token's limits, the user's own and its organisations', or any for
        an admin. The one rule behind :meth:`owns`, :func:`can_read` and, in
        SQL, ``crud.visible_clause``. Names are lowercased: a namespace is
        found whatever the case it is written in (``models.name_key``)."""
        if self.is_admin:
            return None if self.namespaces is None else {n.lower() for n in self.namespaces}
        owners = {self.user.name.lower(), *(o.lower() for o in self.orgs)}
        return owners if self.namespaces is None else owners & {n.lower() for n in self.namespaces}

    def owns(self, owner: str) -> bool:
        """May act on namespace ``owner``, in any case (see :meth:`owned_namespaces`)."""
        owned = self.owned_namespaces()
        return owned is None or owner.lower() in owned


def authenticate(session: Session, token: str) -> Principal:
    """Turn a presented token into a principal, or raise AuthenticationError.

    One statement (the token, its user and the user's organisations), or
    none while this process's short-lived cache holds the principal
    (:mod:`peft_hub.hub.cache`: a revoke, an expiry moved or a membership
    changed in this process is seen at once, in another replica within
    ``PEFT_HUB_CACHE_TTL``). The expiry is checked at every use, cached or not.
    """
    lookup = lookup_of(token)
    if lookup is None:
        raise AuthenticationError(INVALID)
    digest = hash_token(token)
    hub_cache = cache.of(session.get_bind())
    cached: tuple[Principal, datetime | None] | None = hub_cache.get("auth", digest)
    if cached is None:
        cached = hub_cache.load("auth", digest, lambda: _read_principal(session, lookup, digest))
    principal, last_used = cached
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise AuthenticationError(INVALID)
    touch_id(session, principal.token_id, last_used)
    return principal


def _read_principal(session: Session, lookup: str, digest: str) -> tuple[Principal, datetime | None]:
    """The principal of a token and when it was last used, in one statement."""
    org = aliased(Namespace)
    rows = session.exec(
        select(Token, Namespace, org.name)
        .join(Namespace, col(Namespace.id) == Token.user_id)
        .join(Membership, col(Membership.user_id) == Token.user_id, isouter=True)
        .join(org, col(org.id) == Membership.org_id, isouter=True)
        .where(Token.lookup == lookup)
    ).all()
    row = rows[0][0] if rows else None
    if row is None or not hmac.compare_digest(row.token_hash, digest) or is_expired(row):
        raise AuthenticationError(INVALID)
    principal = _principal(row, rows[0][1], {name for _, _, name in rows if name is not None})
    return principal, as_utc(row.last_used_at)


def cached_principal(engine: Engine, token: str) -> Principal | None:
    """The principal for ``token`` if this process's cache holds it, unexpired,
    with no use to record yet; else None (then :func:`authenticate` decides).
    Runs no statement, so it may run on the event loop."""
    cached = cache.of(engine).get("auth", hash_token(token)) if lookup_of(token) else None
    if cached is None:
        return None
    principal, last = cached
    now = utcnow()
    if principal.expires_at is not None and principal.expires_at <= now:
        return None
    if last is None or now - last >= TOUCH_EVERY:
        return None
    return principal


def principal_for(session: Session, row: Token) -> Principal:
    """The principal a valid, unexpired token row acts as (its scope capped by the user's role)."""
    user = session.get(Namespace, row.user_id)
    if user is None:
        raise AuthenticationError(INVALID)
    orgs = session.exec(
        select(Namespace.name)
        .join(Membership, col(Membership.org_id) == Namespace.id)
        .where(Membership.user_id == row.user_id)
    ).all()
    touch(session, row)
    return _principal(row, user, set(orgs))


def _principal(row: Token, user: Namespace, orgs: set[str]) -> Principal:
    scope = row.scope if row.scope in SCOPES else "read"
    if scope_rank(scope) > scope_rank(highest_scope(user)):
        scope = highest_scope(user)
    return Principal(user=user, scope=scope, namespaces=row.namespaces, orgs=orgs, token_id=row.id,
                     expires_at=as_utc(row.expires_at))


def touch(session: Session, row: Token) -> None:
    """:func:`touch_id` for a token row."""
    touch_id(session, row.id, as_utc(row.last_used_at))


def touch_id(session: Session, token_id: int | None, last: datetime | None) -> None:
    """Record that the token was used, at most once per TOUCH_EVERY.

    The write never joins a request's long transaction, so a read stays a
    read (holding no row lock for the length of the request) and a failed
    request still counts as a use: in a short session (``session.info["short"]``,
    see ``deps.short_session``, which commits as authentication ends) it is
    written there, on the one connection; elsewhere in a transaction of its own.
    """
    now = utcnow()
    if token_id is None or (last is not None and now - last < TOUCH_EVERY):
        return
    cutoff = now - TOUCH_EVERY
    unused_since = or_(col(Token.last_used_at).is_(None), col(Token.last_used_at) < cutoff)
    stmt = update(Token).where(col(Token.id) == token_id, unused_since).values(last_used_at=now)
    try:
        if session.info.get("short"):
            if session.get_bind().dialect.name == "postgresql":
                with session.begin_nested():  # a failed statement would end the transaction
                    session.exec(stmt)
            else:
                session.exec(stmt)
            return
        engine = cast(Engine, session.get_bind())  # outside a short session, the session is bound to the engine
        with engine.begin() as conn:
            conn.execute(stmt)
    except SQLAlchemyError as exc:  # bookkeeping: never fail the request over it
        log.warning("could not record the use of token %s: %s", token_id, exc)


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
            allowed = ", ".join(principal.namespaces or []) or "no namespaces"
            raise PermissionDeniedError(f"your token is limited to {allowed} and cannot act on {name!r}")
    return principal
