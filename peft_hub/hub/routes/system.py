"""Identity, tokens, blob uploads (local storage), health."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from peft_hub.adapter_files import WEIGHTS_MAX_BYTES
from peft_hub.errors import (
    DatabaseUnavailableError,
    InvalidInputError,
    NamespaceNotFoundError,
    NotFoundError,
    PeftHubError,
    PermissionDeniedError,
    StorageUnavailableError,
    UnavailableError,
)
from peft_hub.hub import audit, crud, possession
from peft_hub.hub.auth import Principal, as_utc, is_expired, require_admin, require_scope, scope_rank
from peft_hub.hub.db import describe, is_unavailable, ping, unavailable
from peft_hub.hub.deps import ClientDep, PrincipalDep, SessionDep, StoreDep
from peft_hub.hub.models import Namespace, Token, utcnow
from peft_hub.hub.schemas import TokenRequest
from peft_hub.hub.uploads import receive
from peft_hub.names import validate_namespace

router = APIRouter(prefix="/api", tags=["system"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process is up and answering. It checks nothing else, so
    it is always fast; ``/api/health/ready`` checks the dependencies."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, str]:
    """Readiness: the database and the blob store both answer within
    ``ready_timeout`` seconds; else 503 naming which did not."""
    state = request.app.state
    timeout, store = state.settings.ready_timeout, state.store
    checks = {
        "database": (partial(ping, state.engine), f"database ({describe(state.engine)})"),
        "storage": (partial(store.stat, "0" * 64), f"storage ({store.where})"),
    }
    failed: dict[str, str] = {}

    async def check(name: str) -> None:
        call, what = checks[name]
        try:
            with anyio.fail_after(timeout):  # a hung call is abandoned, on threads of its own
                await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=state.ready_limiter)
        except TimeoutError:
            failed[name] = f"{what} did not answer within {timeout:g} s"
        except Exception as exc:  # reported, whatever it is
            failed[name] = (unavailable(exc).message if is_unavailable(exc)
                            else str(exc) if isinstance(exc, PeftHubError) else f"{what} failed: {exc}")

    async with anyio.create_task_group() as group:
        for name in checks:
            group.start_soon(check, name)
    if failed:
        kind = (UnavailableError if len(failed) > 1 else
                DatabaseUnavailableError if "database" in failed else StorageUnavailableError)
        raise kind("not ready: " + "; ".join(failed[n] for n in checks if n in failed))
    return {"status": "ready", "database": "ok", "storage": "ok"}


@router.get("/whoami")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    principal = require_scope(principal, "read")
    return {
        "name": principal.user.name, "scope": principal.scope, "is_admin": principal.is_admin,
        "orgs": sorted(principal.orgs), "namespaces": principal.namespaces, "token_id": principal.token_id,
        "expires_at": _iso(principal.expires_at),
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def _token_public(row: Token, owner: Namespace, principal: Principal) -> dict[str, Any]:
    """A token as ``token ls`` shows it: never its secret, hash or lookup."""
    return {
        "id": row.id, "name": row.name, "user": owner.name, "scope": row.scope, "namespaces": row.namespaces,
        "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at), "last_used_at": _iso(row.last_used_at),
        "expired": is_expired(row), "current": row.id == principal.token_id,
    }


def _new_token_expiry(requested: datetime | None, principal: Principal) -> datetime | None:
    """A new token expires when asked, and never after the token creating it."""
    at = as_utc(requested)
    if at is not None and at <= utcnow():
        raise InvalidInputError("expires_at is in the past")
    if principal.expires_at is not None:
        if at is None:
            return principal.expires_at
        if at > principal.expires_at:
            raise PermissionDeniedError(f"a token cannot outlive the token that creates it (yours expires at "
                                        f"{principal.expires_at.isoformat()})")
    return at


def _grant(
    session: Session, body: TokenRequest, principal: Principal
) -> tuple[str, Namespace | None, list[str] | None, datetime | None]:
    """Check a token request against the caller; return the user's name and
    row (None: to be created), the limits and the expiry the new token gets.

    An admin may create tokens for any user; anyone else only for themselves.
    Either way the new token has no more scope, namespaces or lifetime than the
    calling token, and no more scope than its user's role.
    """
    name = validate_namespace(body.namespace, what="namespace") if body.namespace else principal.user.name
    if name != principal.user.name:
        if not principal.is_admin:
            raise PermissionDeniedError("only an admin can create tokens for another user")
        require_admin(principal, name)
    if scope_rank(body.scope) > scope_rank(principal.scope):
        raise PermissionDeniedError(f"your token has the {principal.scope!r} scope; it cannot create a "
                                    f"{body.scope!r} token")
    target = crud.get_namespace(session, name=name)
    if target is not None and target.kind != "user":
        raise InvalidInputError(f"{name!r} is an organisation; tokens act as users")
    if body.scope == "admin" and not (target is not None and target.is_admin):
        raise InvalidInputError(f"a token's scope cannot exceed its user's role: {name!r} is not an admin, "
                                "so 'write' is the highest scope")
    limits = [validate_namespace(n, what="namespace") for n in body.limit] if body.limit else None
    if principal.namespaces is not None:
        limits = limits if limits is not None else list(principal.namespaces)
        outside = sorted(set(limits) - set(principal.namespaces))
        if outside:
            allowed = ", ".join(principal.namespaces) or "no namespaces"
            raise PermissionDeniedError(f"your token is limited to {allowed};"
                                        f" it cannot create a token for {', '.join(outside)}")
    return name, target, limits, _new_token_expiry(body.expires_at, principal)


@router.post("/tokens", status_code=201)
def create_token(body: TokenRequest, session: SessionDep, principal: PrincipalDep, client: ClientDep) -> dict[str, Any]:
    """Create a token acting as ``namespace`` (default: you), limited to ``limit``
    (see ``_grant`` for who may create which)."""
    principal = require_scope(principal, "read")
    name, target, limits, expires_at = _grant(session, body, principal)
    user = target or crud.ensure_namespace(session, name=name)
    row, token = crud.issue_token(session, user=user, scope=body.scope, namespaces=limits, name=body.name,
                                  expires_at=expires_at)
    audit.record(session, actor=principal.user.name, action="token.create", target=f"token:{row.id}", client=client,
                 detail={"user": user.name, "scope": body.scope, "namespaces": limits, "name": body.name,
                         "expires_at": _iso(expires_at)})
    return {"token": token, **_token_public(row, user, principal)}


@router.get("/tokens")
def list_tokens(session: SessionDep, principal: PrincipalDep, user: str | None = None) -> list[dict[str, Any]]:
    """Your tokens (an admin may name another ``user``); never their secrets."""
    principal = require_scope(principal, "read")
    owner = principal.user
    if user and user != principal.user.name:
        require_admin(principal, user)
        named = crud.get_namespace(session, name=user)
        if named is None:
            raise NamespaceNotFoundError(f"no user {user!r}")
        owner = named
    return [_token_public(row, owner, principal) for row in crud.list_tokens(session, user=owner)]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, principal: PrincipalDep, client: ClientDep
) -> Response:
    """Revoke (delete) a token and end its web sessions: its owner, or an admin."""
    principal = require_scope(principal, "read")
    row = crud.get_token(session, token_id=token_id)
    if row is None or (row.user_id != principal.user.id and not principal.is_admin):
        raise NotFoundError(f"token {token_id} not found")
    owner = session.get(Namespace, row.user_id)
    assert owner is not None  # a token's user (a foreign key)
    if row.user_id != principal.user.id:
        require_admin(principal, owner.name)
    crud.revoke_token(session, token=row)
    audit.record(session, actor=principal.user.name, action="token.revoke", target=f"token:{token_id}", client=client,
                 detail={"user": owner.name, "scope": row.scope, "name": row.name})
    return Response(status_code=204)


@router.put("/orgs/{org}/members/{user}", status_code=201)
def add_member(org: str, user: str, session: SessionDep, principal: PrincipalDep, client: ClientDep) -> dict[str, str]:
    """Add a user to an organisation, creating either if new (admin only)."""
    org, user = validate_namespace(org, what="organisation"), validate_namespace(user, what="user")
    principal = require_admin(principal, org, user)
    crud.add_member(session, org=org, user=user)
    audit.record(session, actor=principal.user.name, action="org.member_add", target=org, client=client,
                 detail={"user": user})
    return {"org": org, "user": user}


@router.get("/admin/audit")
def audit_log(
    session: SessionDep, principal: PrincipalDep, actor: str | None = None, action: str | None = None,
    since: datetime | None = None, limit: int = Query(100, ge=1, le=audit.MAX_LIMIT),
) -> list[dict[str, Any]]:
    """Audit events, newest first (admin only)."""
    require_admin(principal)
    events = audit.query(session, actor=actor, action=action, since=as_utc(since), limit=limit)
    return [audit.as_dict(e) for e in events]


@router.put("/blobs/{sha256}", name="upload_blob", status_code=201)
async def upload_blob(
    sha256: str, request: Request, session: SessionDep, store: StoreDep, principal: PrincipalDep,
    size: int = Query(ge=0, le=WEIGHTS_MAX_BYTES),
) -> dict[str, Any]:
    """Receive a blob's bytes, verified before it is kept, and note that the
    caller holds them (the local backend's upload target, and S3's for a blob
    that is already stored)."""
    principal = require_scope(principal, "write")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidInputError("sha256 must be 64 lowercase hex digits")
    await receive(store, sha256, size, request.stream())
    assert principal.user.id is not None  # a stored row
    await run_in_threadpool(
        possession.record_upload, session, store, user_id=principal.user.id, sha256=sha256, size=size)
    return {"sha256": sha256, "size": size}
