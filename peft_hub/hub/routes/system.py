"""Identity, tokens, blob uploads (local storage), garbage collection, health."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import WEIGHTS_MAX_BYTES, validate_namespace
from peft_hub.errors import InvalidInputError
from peft_hub.hub import crud, possession
from peft_hub.hub.auth import require_scope
from peft_hub.hub.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from peft_hub.hub.models import utcnow
from peft_hub.hub.schemas import GcRequest, TokenRequest
from peft_hub.hub.uploads import receive

router = APIRouter(prefix="/api", tags=["system"])


@router.get("/health")
def health(session: SessionDep) -> dict[str, str]:
    crud.count_namespaces(session)
    return {"status": "ok"}


@router.get("/whoami")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    principal = require_scope(principal, "read")
    return {
        "name": principal.user.name, "scope": principal.scope, "is_admin": principal.is_admin,
        "orgs": sorted(principal.orgs), "namespaces": principal.namespaces,
    }


@router.post("/tokens", status_code=201)
def create_token(body: TokenRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Create a token (admin only) acting as ``namespace``, optionally limited to ``limit``."""
    require_scope(principal, "admin")
    if not principal.is_admin:
        raise InvalidInputError("only an admin user can create tokens")
    user = principal.user
    if body.namespace:
        user = crud.ensure_namespace(session, name=validate_namespace(body.namespace, what="namespace"))
    limits = [validate_namespace(n, what="namespace") for n in body.limit] if body.limit else None
    token = crud.create_token(session, user=user, scope=body.scope, namespaces=limits)
    return {"token": token, "user": user.name, "scope": body.scope, "namespaces": limits}


@router.put("/orgs/{org}/members/{user}", status_code=201)
def add_member(org: str, user: str, session: SessionDep, principal: PrincipalDep) -> dict[str, str]:
    """Add a user to an organisation, creating either if new (admin only)."""
    require_scope(principal, "admin")
    crud.add_member(session, org=validate_namespace(org, what="organisation"), user=validate_namespace(user, what="user"))
    return {"org": org, "user": user}


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
    await run_in_threadpool(possession.record_receipt, session, user_id=principal.user.id, sha256=sha256, size=size)
    return {"sha256": sha256, "size": size}


@router.post("/admin/gc")
def gc(body: GcRequest, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Delete blobs no revision references, once older than the grace period."""
    require_scope(principal, "admin")
    grace = settings.gc_grace_seconds if body.grace_seconds is None else body.grace_seconds
    cutoff = utcnow() - timedelta(seconds=grace)
    referenced = crud.referenced_blobs(session)
    deleted, freed, kept = [], 0, 0
    for blob in store.iterate():
        if blob.sha256 in referenced:
            continue
        if blob.modified > cutoff:
            kept += 1
            continue
        if not body.dry_run:
            store.delete(blob.sha256)
        deleted.append(blob.sha256)
        freed += blob.size
    return {"deleted": deleted, "bytes_freed": freed, "kept_in_grace": kept, "dry_run": body.dry_run, "grace_seconds": grace}
