"""Adapter events into the webhook outbox, and the hook and deployment records.

A push, a tag move and an adapter delete each call one function here, inside
the transaction that makes the change: the event and one delivery row per
matching hook join that transaction (a transactional outbox), so a crash can
neither lose an event nor invent one for a change that was rolled back. The
worker in :mod:`peft_hub.hub.webhooks` sends them later; nothing here touches
the network, so a slow receiver can never slow a push.

Nothing here commits; writes are keyword-only functions of a session.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Literal
from weakref import WeakKeyDictionary

from sqlalchemy import delete, exists
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.errors import ConflictError, NotFoundError
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.models import (
    Adapter,
    Deployment,
    Namespace,
    Revision,
    Tag,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
    utcnow,
)

KINDS: tuple[Literal["tag", "push", "delete"], ...] = ("tag", "push", "delete")
#: Hooks one user may have; bounds the work every push does to match them.
MAX_HOOKS_PER_USER = 100
#: Deliveries one listing returns, newest first.
MAX_DELIVERIES_SHOWN = 100
#: ``session.info`` key: adapter id -> the revision ``main`` left in this transaction.
_MAIN_MOVES = "peft_hub.events.main_moves"
_WAKE_ARMED = "peft_hub.events.wake_armed"
#: Engine -> the worker's wake-up (thread-safe), so a commit here wakes it at once.
_WAKERS: WeakKeyDictionary[Engine, Callable[[], None]] = WeakKeyDictionary()


def register_waker(engine: Engine, wake: Callable[[], None] | None) -> None:
    """Have commits that enqueue deliveries on ``engine`` call ``wake`` (None: stop)."""
    if wake is None:
        _WAKERS.pop(engine, None)
    else:
        _WAKERS[engine] = wake


def iso(moment: datetime) -> str:
    """``moment`` as ISO-8601 UTC with a ``Z``, the form bodies carry."""
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the outbox: one call per place that changes what a name means ------------


def tag_moved(session: Session, *, adapter: Adapter, tag: str, revision: Revision, previous_id: int | None) -> None:
    """``tag`` of ``adapter`` now points at ``revision`` (was ``previous_id``; None: new tag)."""
    before = session.get(Revision, previous_id) if previous_id is not None else None
    previous = before.sha if before is not None else None
    if previous == revision.sha:
        return
    if tag == "main":  # the first move in a transaction keeps its "previous"
        session.info.setdefault(_MAIN_MOVES, {}).setdefault(adapter.id, previous)
    _enqueue(session, adapter, kind="tag", tag=tag, revision=revision.sha, previous=previous)


def tag_deleted(session: Session, *, adapter: Adapter, tag: str, previous_id: int) -> None:
    """``tag`` was removed: a ``tag`` event with no revision."""
    previous = session.get(Revision, previous_id)
    _enqueue(session, adapter, kind="tag", tag=tag, revision=None, previous=previous.sha if previous else None)


def pushed(session: Session, *, adapter: Adapter, revision: Revision) -> None:
    """A push made ``revision`` the new ``main``: a ``push`` event, when main moved."""
    moves = session.info.get(_MAIN_MOVES, {})
    if adapter.id in moves:
        _enqueue(session, adapter, kind="push", tag=None, revision=revision.sha, previous=moves.pop(adapter.id))


def adapter_deleted(session: Session, *, adapter: Adapter) -> None:
    """``adapter`` is being deleted (call before its tags go): a ``delete`` event."""
    main = session.exec(
        select(Revision.sha).join(Tag, col(Tag.revision_id) == Revision.id)
        .where(Tag.adapter_id == adapter.id, Tag.name == "main")
    ).first()
    _enqueue(session, adapter, kind="delete", tag=None, revision=None, previous=main)


def _enqueue(session: Session, adapter: Adapter, *, kind: str, tag: str | None, revision: str | None,
             previous: str | None) -> None:
    hooks = [h for h in session.exec(select(Webhook).where(Webhook.owner == adapter.owner))
             if (h.name is None or h.name == adapter.name) and kind in (h.events or [])]
    if not hooks:
        return
    now = utcnow()
    row = WebhookEvent(id=str(uuid.uuid4()), kind=kind, owner=adapter.owner, name=adapter.name, tag=tag,
                       revision=revision, previous=previous, private=adapter.private, timestamp=iso(now),
                       created_at=now)
    session.add(row)
    session.flush()  # the event before the deliveries that reference it
    for hook in hooks:
        assert hook.id is not None  # a stored row
        session.add(WebhookDelivery(id=str(uuid.uuid4()), webhook_id=hook.id, event_id=row.id, next_attempt_at=now))
    _wake_after_commit(session)


def _wake_after_commit(session: Session) -> None:
    if session.info.get(_WAKE_ARMED):
        return
    session.info[_WAKE_ARMED] = True
    engine = session.get_bind()

    def wake(_session: Session) -> None:
        session.info.pop(_WAKE_ARMED, None)
        waker = _WAKERS.get(engine) if isinstance(engine, Engine) else None
        if waker is not None:
            waker()

    sa_event.listen(session, "after_commit", wake, once=True)


def body(event: WebhookEvent) -> bytes:
    """The exact bytes a delivery sends (and signs): compact JSON, keys sorted."""
    return json.dumps({
        "id": event.id, "event": event.kind, "repo": f"{event.owner}/{event.name}", "tag": event.tag,
        "revision": event.revision, "previous": event.previous, "timestamp": event.timestamp,
    }, separators=(",", ":"), sort_keys=True).encode()


# --- hooks -------------------------------------------------------------------


def sees_all(principal: Principal) -> bool:
    """An admin with a hub-wide token sees every hook and deployment."""
    return principal.is_admin and principal.namespaces is None


def create_webhook(session: Session, *, user: Namespace, url: str, secret: str, owner: str, name: str | None,
                   events: Sequence[str]) -> Webhook:
    """Store a hook (the caller has checked write access to ``owner``)."""
    count = len(session.exec(select(Webhook.id).where(Webhook.user_id == user.id)).all())
    if count >= MAX_HOOKS_PER_USER:
        raise ConflictError(f"{user.name} already has {count} webhooks, the most one user may have; remove one first")
    assert user.id is not None  # a stored row
    hook = Webhook(user_id=user.id, url=url, secret=secret, owner=owner, name=name,
                   events=[k for k in KINDS if k in events])
    session.add(hook)
    session.flush()
    return hook


def list_webhooks(session: Session, *, principal: Principal) -> list[tuple[Webhook, str]]:
    """The caller's hooks (an admin's: everyone's), with their creators' names."""
    query = select(Webhook, Namespace.name).join(Namespace, col(Namespace.id) == Webhook.user_id)
    if not sees_all(principal):
        query = query.where(Webhook.user_id == principal.user.id)
    return list(session.exec(query.order_by(col(Webhook.id))).all())


def get_webhook(session: Session, *, principal: Principal, hook_id: int) -> Webhook:
    """The hook, if the caller created it or sees all; else NotFoundError (no existence oracle)."""
    hook = session.get(Webhook, hook_id)
    if hook is None or not (hook.user_id == principal.user.id or sees_all(principal)):
        raise NotFoundError(f"webhook {hook_id} not found")
    return hook


def delete_webhook(session: Session, *, hook: Webhook) -> None:
    """Delete a hook and its deliveries, sent or pending, and the events no
    other hook's delivery still needs (statements, not loaded rows: a prune
    deleting some of the same rows meanwhile changes nothing)."""
    events = select(WebhookDelivery.event_id).where(WebhookDelivery.webhook_id == hook.id).distinct()
    event_ids = list(session.exec(events))
    session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == hook.id))
    if event_ids:
        needed = exists().where(col(WebhookDelivery.event_id) == WebhookEvent.id)
        session.execute(delete(WebhookEvent).where(col(WebhookEvent.id).in_(event_ids), ~needed))
    session.delete(hook)


def list_deliveries(session: Session, *, hook: Webhook) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    return list(session.exec(
        select(WebhookDelivery, WebhookEvent).join(WebhookEvent, col(WebhookEvent.id) == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == hook.id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id)).limit(MAX_DELIVERIES_SHOWN)
    ).all())


def webhook_public(hook: Webhook, creator: str) -> dict[str, Any]:
    """What the API shows of a hook: everything but its secret."""
    return {
        "id": hook.id, "url": hook.url, "namespace": hook.owner if hook.name is None else None,
        "adapter": f"{hook.owner}/{hook.name}" if hook.name is not None else None, "events": hook.events,
        "created_by": creator, "created_at": iso(hook.created_at),
    }


def delivery_public(row: WebhookDelivery, event: WebhookEvent) -> dict[str, Any]:
    return {
        "id": row.id, "event": event.kind, "event_id": event.id, "repo": f"{event.owner}/{event.name}",
        "tag": event.tag, "revision": event.revision, "status": row.status, "attempts": row.attempts,
        "last_error": row.last_error, "response_code": row.response_code,
        "next_attempt_at": iso(row.next_attempt_at) if row.status == "pending" else None,
        "created_at": iso(row.created_at), "finished_at": iso(row.finished_at) if row.finished_at else None,
    }


# --- deployments -------------------------------------------------------------

#: Servers one user may register.
MAX_DEPLOYMENTS_PER_USER = 1000


def put_deployment(session: Session, *, principal: Principal, server_id: str, url: str, base_model: str,
                   adapters: list[dict[str, Any]]) -> Deployment:
    """Create or refresh a server's row; only its registrant (or an admin) may refresh it."""
    row = session.get(Deployment, server_id)
    if row is None:
        count = len(session.exec(select(Deployment.server_id).where(Deployment.user_id == principal.user.id)).all())
        if count >= MAX_DEPLOYMENTS_PER_USER:
            raise ConflictError(f"{principal.user.name} already has {count} deployments registered, the most allowed")
        assert principal.user.id is not None  # a stored row
        row = Deployment(server_id=server_id, user_id=principal.user.id, url=url, base_model=base_model)
    elif row.user_id != principal.user.id and not sees_all(principal):
        raise ConflictError(f"server id {server_id!r} is registered by another user; choose another")
    row.url, row.base_model, row.adapters, row.last_seen = url, base_model, adapters, utcnow()
    session.add(row)
    session.flush()
    return row


def get_deployment(session: Session, *, principal: Principal, server_id: str) -> Deployment:
    row = session.get(Deployment, server_id)
    if row is None or not (row.user_id == principal.user.id or sees_all(principal)):
        raise NotFoundError(f"deployment {server_id!r} not found")
    return row


def delete_deployment(session: Session, *, row: Deployment) -> None:
    session.delete(row)


def list_deployments(session: Session, *, principal: Principal) -> list[dict[str, Any]]:
    """The servers the caller registered (an admin: all), each listing only
    the adapters the caller can read now."""
    query = select(Deployment, Namespace.name).join(Namespace, col(Namespace.id) == Deployment.user_id)
    if not sees_all(principal):
        query = query.where(Deployment.user_id == principal.user.id)
    rows = list(session.exec(query.order_by(Deployment.server_id)).all())
    owners = {a.get("repo", "").partition("/")[0] for row, _ in rows for a in row.adapters}
    readable = {f"{a.owner}/{a.name}" for a in session.exec(select(Adapter).where(col(Adapter.owner).in_(owners)))
                if can_read(principal, a)} if owners else set()
    return [{
        "server_id": row.server_id, "url": row.url, "base_model": row.base_model, "registered_by": user,
        "last_seen": iso(row.last_seen), "adapters": [a for a in row.adapters if a.get("repo") in readable],
    } for row, user in rows]
