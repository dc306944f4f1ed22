"""Tags and visibility from HF tools: ``create_tag``/``delete_tag``
(``hf repos tag create/delete``) and ``update_repo_settings(private=...)``.

They are the native tags and visibility under other URLs: the same write
permission check, the same crud functions (so the same tag events), and the
same audit records as ``PUT``/``DELETE /api/adapters/{id}/tags/{tag}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from peft_hub.errors import InvalidInputError
from peft_hub.hub import audit, crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.deps import ClientDep, SessionDep
from peft_hub.hub.hf.access import HfPrincipalDep
from peft_hub.hub.hf.write import json_object, writable

router = APIRouter()


@router.post("/api/models/{owner}/{name}/tag/{rev}")
async def create_tag(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, principal: HfPrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Tag a revision (a tag, an id or a unique prefix). An existing tag is a
    409, as on huggingface.co (``create_tag(exist_ok=True)`` relies on it); move
    one with ``peft-hub tag``."""
    body = await json_object(request)
    tag = body.get("tag")
    return await run_in_threadpool(_create_tag, session, principal, owner, name, rev, tag, client)


def _create_tag(session: Session, principal: Principal | None, owner: str, name: str, rev: str, tag: Any,
                client: str) -> dict[str, Any]:
    adapter, principal = writable(session, principal, owner, name)
    crud.validate_tag(tag)
    revision = crud.resolve_revision(session, adapter=adapter, rev=rev)
    crud.set_tag(session, adapter=adapter, tag=tag, revision=revision, new=True)
    audit.record(session, actor=principal.user.name, action="tag.move", target=f"{adapter.owner}/{adapter.name}:{tag}",
                 client=client, detail={"revision": revision.sha})
    return {"tag": tag, "revision": revision.sha}


@router.delete("/api/models/{owner}/{name}/tag/{tag}")
def delete_tag(
    owner: str, name: str, tag: str, session: SessionDep, principal: HfPrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Delete a tag (never ``main``)."""
    adapter, principal = writable(session, principal, owner, name)
    crud.delete_tag(session, adapter=adapter, tag=tag)
    audit.record(session, actor=principal.user.name, action="tag.delete",
                 target=f"{adapter.owner}/{adapter.name}:{tag}", client=client)
    return {}


@router.put("/api/models/{owner}/{name}/settings")
async def update_settings(
    owner: str, name: str, request: Request, session: SessionDep, principal: HfPrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Visibility: ``{"visibility": "private"|"public"}`` (huggingface_hub >= 0.30)
    or ``{"private": bool}`` (older). Gating is refused: peft-hub has none."""
    body = await json_object(request)
    private = _private(body)
    return await run_in_threadpool(_update_settings, session, principal, owner, name, private, client)


def _private(body: dict[str, Any]) -> bool:
    if body.get("gated") not in (None, False):
        raise InvalidInputError("peft-hub has no gated repos: a repo is public or private")
    unknown = sorted(set(body) - {"visibility", "private", "gated"})
    if unknown:
        raise InvalidInputError(f"unsupported repo settings: {', '.join(map(str, unknown))[:200]}")
    visibility, private = body.get("visibility"), body.get("private")
    if visibility is not None:
        if visibility not in ("private", "public"):
            raise InvalidInputError("visibility must be 'private' or 'public'")
        return visibility == "private"
    if not isinstance(private, bool):
        raise InvalidInputError("give 'visibility' ('private' or 'public') or 'private' (true or false)")
    return private


def _update_settings(session: Session, principal: Principal | None, owner: str, name: str, private: bool,
                     client: str) -> dict[str, Any]:
    adapter, principal = writable(session, principal, owner, name)
    if adapter.private != private:
        crud.set_visibility(session, adapter=adapter, private=private)
        audit.record(session, actor=principal.user.name, action="adapter.visibility",
                     target=f"{adapter.owner}/{adapter.name}", client=client,
                     detail={"private": private})
    return {"private": private, "visibility": "private" if private else "public"}
