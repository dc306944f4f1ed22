"""The audit log: who did what, when, and from where.

Call :func:`record` with the request's session, inside the route that does
the action: the event is added to the same transaction, so the action and its
audit row commit together, or neither does. For example, from a publish::

    audit.record(session, actor=principal.user.name, action="push",
                 target=f"{owner}/{name}@{revision.sha}", client=client,
                 detail={"tags": tags, "created": created})

Actions recorded: ``push`` (publish, both APIs), ``tag.move``,
``tag.delete``, ``adapter.delete``, ``eval.add``, ``eval.delete``,
``token.create``, ``token.revoke``, ``org.member_add``, ``gc`` and
``auth.failed_burst``. Keep action names dotted and at most 32 characters.

:func:`record_now` writes in its own short transaction, for events that must
survive the failing request that caused them (a burst of failed sign-ins).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.hub.models import AuditEvent

#: The most events one query returns.
MAX_LIMIT = 1000


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str = "",
    client: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to ``session``'s transaction (it commits with the caller's).

    Args:
        actor: the user name acting ("" when nobody authenticated).
        action: a dotted verb such as ``token.create``.
        target: what it acted on, e.g. ``owner/name`` or ``token:12``.
        client: the client's address (``request.client.host``).
        detail: JSON-able extra facts (counts, scopes, revisions).
    """
    event = AuditEvent(actor=actor[:64], action=action[:32], target=target[:300], client=client[:64],
                       detail=detail or {})
    session.add(event)
    return event


def record_now(engine: Engine, **fields: Any) -> None:
    """Write one event in its own transaction (see :func:`record` for the fields)."""
    with Session(engine) as session:
        record(session, **fields)
        session.commit()


def query(
    session: Session, *, actor: str | None = None, action: str | None = None, since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """Events newest first, filtered by exact actor and action and by time."""
    statement = select(AuditEvent)
    if actor:
        statement = statement.where(AuditEvent.actor == actor)
    if action:
        statement = statement.where(AuditEvent.action == action)
    if since is not None:
        statement = statement.where(AuditEvent.at >= since)
    limit = max(1, min(limit, MAX_LIMIT))
    return list(session.exec(statement.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()).limit(limit)))


def as_dict(event: AuditEvent) -> dict[str, Any]:
    """The JSON form the API returns."""
    return {
        "id": event.id, "at": event.at.isoformat(), "actor": event.actor, "action": event.action,
        "target": event.target, "client": event.client, "detail": event.detail,
    }
