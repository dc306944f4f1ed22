"""Webhooks (``/api/webhooks``) and the deployments registry (``/api/deployments``).

A hook belongs to the user who added it: only they (or a hub-wide admin) see
it, its deliveries or remove it, and its secret is never returned. A
deployment is a serving process reporting which adapter refs it serves at
which revision; a viewer sees only the entries of adapters it can read.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from peft_hub.errors import InvalidInputError
from peft_hub.hub import audit, events, webhook_urls
from peft_hub.hub.auth import require_scope, require_write
from peft_hub.hub.deps import ClientDep, PrincipalDep, SessionDep, SettingsDep
from peft_hub.hub.schemas import OneLine
from peft_hub.names import validate_namespace, validate_repo_id

router = APIRouter(prefix="/api", tags=["events"])

HookId = Annotated[int, Path(ge=1, le=2**31 - 1)]
SERVER_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, OneLine(webhook_urls.MAX_URL_CHARS, min_length=1)]
    #: 16-256 characters; deliveries are signed with it, and it is never shown again.
    secret: Annotated[str, OneLine(256, min_length=16)]
    namespace: Annotated[str, OneLine(64, min_length=1)] | None = None
    adapter: Annotated[str, OneLine(129, min_length=3)] | None = None
    events: list[Literal["tag", "push", "delete"]] = Field(default_factory=lambda: list(events.KINDS),
                                                           min_length=1, max_length=3)


class DeployedAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: Annotated[str, OneLine(300, min_length=1)]
    repo: Annotated[str, OneLine(129, min_length=3)]
    ref_name: Annotated[str, OneLine(64, min_length=1)] | None = None
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", strict=True)


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, OneLine(webhook_urls.MAX_URL_CHARS, min_length=1)]
    base_model: Annotated[str, OneLine(300, min_length=1)]
    adapters: list[DeployedAdapter] = Field(default_factory=list, max_length=1000)


# --- webhooks ------------------------------------------------------------------


@router.post("/webhooks", status_code=201)
def add_webhook(body: WebhookRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                client: ClientDep) -> dict[str, Any]:
    """Send signed events of a namespace, or of one adapter, to ``url`` (needs write access to it)."""
    principal = require_scope(principal, "write")
    if (body.namespace is None) == (body.adapter is None):
        raise InvalidInputError("give exactly one of 'namespace' and 'adapter' (owner/name)")
    if body.adapter is not None:
        owner, name = validate_repo_id(body.adapter)
    else:
        assert body.namespace is not None  # exactly one of the two (checked above)
        owner, name = validate_namespace(body.namespace, what="namespace"), None
    principal = require_write(principal, owner)
    url = webhook_urls.check_url(body.url, allow_private=settings.webhook_allow_private)
    hook = events.create_webhook(session, user=principal.user, url=url, secret=body.secret, owner=owner, name=name,
                                 events=body.events)
    shown = events.webhook_public(hook, principal.user.name)
    audit.record(session, actor=principal.user.name, action="webhook.add", target=f"webhook:{hook.id}", client=client,
                 detail={"url": webhook_urls.shown(url), "namespace": shown["namespace"], "adapter": shown["adapter"],
                         "events": hook.events})
    return shown


@router.get("/webhooks")
def list_webhooks(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """Your webhooks (a hub-wide admin: everyone's), without their secrets."""
    principal = require_scope(principal, "read")
    hooks = events.list_webhooks(session, principal=principal)
    return [events.webhook_public(hook, creator) for hook, creator in hooks]


@router.delete("/webhooks/{hook_id}", status_code=204)
def remove_webhook(hook_id: HookId, session: SessionDep, principal: PrincipalDep, client: ClientDep) -> Response:
    """Remove a webhook and its delivery records (its creator, or an admin)."""
    principal = require_scope(principal, "write")
    hook = events.get_webhook(session, principal=principal, hook_id=hook_id)
    detail = {"url": webhook_urls.shown(hook.url), "owner": hook.owner, "name": hook.name}
    events.delete_webhook(session, hook=hook)
    audit.record(session, actor=principal.user.name, action="webhook.rm", target=f"webhook:{hook_id}", client=client,
                 detail=detail)
    return Response(status_code=204)


@router.get("/webhooks/{hook_id}/deliveries")
def list_deliveries(hook_id: HookId, session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """A webhook's latest deliveries, newest first: status, attempts, last error, response code.

    Finished ones are kept ``webhook_history_days`` and at most
    ``webhook_history_per_hook`` per hook (:mod:`peft_hub.hub.webhook_history`);
    pending ones are never pruned."""
    principal = require_scope(principal, "read")
    hook = events.get_webhook(session, principal=principal, hook_id=hook_id)
    return [events.delivery_public(row, event) for row, event in events.list_deliveries(session, hook=hook)]


# --- deployments -----------------------------------------------------------------


def _server_id(server_id: str) -> str:
    if not SERVER_ID_RE.match(server_id) or set(server_id) == {"."}:
        raise InvalidInputError("a server id is 1-64 letters, digits, '.', '_' or '-' (not only dots)")
    return server_id


def _http_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo:
        raise InvalidInputError("a deployment's url is an http(s) URL with a host and no credentials")
    return url


@router.put("/deployments/{server_id}")
def put_deployment(
    server_id: str, body: DeploymentRequest, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Register a serving process, or refresh what it serves (any token; ids are first come, first served)."""
    principal = require_scope(principal, "read")
    server_id = _server_id(server_id)
    adapters = []
    for entry in body.adapters:
        owner, name = validate_repo_id(entry.repo)
        adapters.append({**entry.model_dump(), "repo": f"{owner}/{name}"})
    row = events.put_deployment(session, principal=principal, server_id=server_id, url=_http_url(body.url),
                                base_model=body.base_model, adapters=adapters)
    return {"server_id": row.server_id, "url": row.url, "base_model": row.base_model, "adapters": row.adapters,
            "last_seen": events.iso(row.last_seen)}


@router.get("/deployments")
def list_deployments(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """The servers you registered (an admin: all), with the adapters you can read."""
    principal = require_scope(principal, "read")
    return events.list_deployments(session, principal=principal)


@router.delete("/deployments/{server_id}", status_code=204)
def delete_deployment(server_id: str, session: SessionDep, principal: PrincipalDep) -> Response:
    """Forget a server (its registrant, or an admin)."""
    principal = require_scope(principal, "read")
    events.delete_deployment(session, row=events.get_deployment(session, principal=principal,
                                                                 server_id=_server_id(server_id)))
    return Response(status_code=204)
