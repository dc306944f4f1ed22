"""Namespaces, organisations, tokens and web sessions."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from peft_hub.errors import ConflictError, InvalidInputError
from peft_hub.hub.auth import as_utc, hash_token, is_expired, lookup_of, new_token
from peft_hub.hub.models import Membership, Namespace, Token, WebSession, name_key, pk, utcnow

# --- namespaces and tokens --------------------------------------------------


def get_namespace(session: Session, *, name: str) -> Namespace | None:
    return session.exec(select(Namespace).where(Namespace.name_key == name_key(name))).first()


def ensure_namespace(session: Session, *, name: str, kind: str = "user", is_admin: bool = False) -> Namespace:
    """The namespace ``name``, created when missing."""
    ns = get_namespace(session, name=name)
    if ns is None:
        ns = Namespace(name=name, name_key=name_key(name), kind=kind, is_admin=is_admin)
        session.add(ns)
        session.flush()
    return ns


def create_token(
    session: Session, *, user: Namespace, scope: str, namespaces: list[str] | None = None, token: str | None = None
) -> str:
    """Store a new token for ``user`` and return its plaintext (shown once)."""
    return issue_token(session, user=user, scope=scope, namespaces=namespaces, token=token)[1]


def issue_token(
    session: Session, *, user: Namespace, scope: str, namespaces: list[str] | None = None, token: str | None = None,
    name: str = "", expires_at: datetime | None = None,
) -> tuple[Token, str]:
    """Store a new token for ``user``; return its row and its plaintext (shown once)."""
    token = token or new_token()
    lookup = lookup_of(token)
    if lookup is None:
        raise InvalidInputError("tokens start with 'phub_' and are at least 33 characters long")
    row = Token(user_id=pk(user), lookup=lookup, token_hash=hash_token(token), scope=scope, namespaces=namespaces,
                name=name, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, *, user: Namespace) -> list[Token]:
    """The user's tokens, oldest first."""
    return list(session.exec(select(Token).where(Token.user_id == user.id).order_by(col(Token.id))))


def get_token(session: Session, *, token_id: int) -> Token | None:
    return session.get(Token, token_id)


def revoke_token(session: Session, *, token: Token) -> None:
    """Delete a token and every web session signed in with it."""
    for web in session.exec(select(WebSession).where(WebSession.token_id == token.id)):
        session.delete(web)
    session.flush()
    session.delete(token)
    session.flush()


def create_web_session(session: Session, *, token: Token, expires_at: datetime) -> tuple[WebSession, str]:
    """A server-side web session acting with ``token``; returns it and the
    random id for the cookie (only its sha256 is stored). Expired sessions
    are swept out on the way."""
    now = utcnow()
    for stale in session.exec(select(WebSession).where(WebSession.expires_at <= now)):
        session.delete(stale)
    if token.expires_at is not None:
        expires_at = min(expires_at, as_utc(token.expires_at))
    raw = secrets.token_urlsafe(32)
    web = WebSession(id_hash=hash_token(raw), token_id=pk(token), csrf=secrets.token_urlsafe(32), expires_at=expires_at)
    session.add(web)
    session.flush()
    return web, raw


def resolve_web_session(session: Session, *, raw_id: str) -> tuple[WebSession, Token] | None:
    """The live session for a cookie's id and its token; None when the id is
    unknown, the session expired, or its token expired or was revoked.

    Read-only, so it can run before ``auth.touch``; expired rows are swept by
    :func:`create_web_session`.
    """
    if not raw_id or len(raw_id) > 128:
        return None
    web = session.get(WebSession, hash_token(raw_id))
    if web is None or as_utc(web.expires_at) <= utcnow():
        return None
    token = session.get(Token, web.token_id)
    if token is None or is_expired(token):
        return None
    return web, token


def add_member(session: Session, *, org: str, user: str) -> Namespace:
    """Make ``user`` a member of organisation ``org`` (both created if new)."""
    org_ns = ensure_namespace(session, name=org, kind="org")
    if org_ns.kind != "org":
        raise ConflictError(f"{org!r} is a user, not an organisation")
    user_ns = ensure_namespace(session, name=user)
    if user_ns.kind != "user":
        raise ConflictError(f"{user!r} is an organisation, not a user")
    if session.get(Membership, (user_ns.id, org_ns.id)) is None:
        session.add(Membership(user_id=pk(user_ns), org_id=pk(org_ns)))
        session.flush()
    return org_ns


def count_namespaces(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Namespace)).one()
