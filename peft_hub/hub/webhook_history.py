"""Pruning the webhook delivery history, so a busy hub's outbox stays bounded.

A finished delivery (``delivered``, ``failed``, ``skipped``: no send will
touch it again) is deleted once it finished more than
``webhook_history_days`` ago, or once its hook has more than
``webhook_history_per_hook`` newer finished ones. A ``pending`` row (due, in
flight under a claim, or waiting for a retry) is never deleted. An event
goes with its last delivery, and one left without any (two pruners at once,
a hook deleted) goes an hour later whatever the settings.

Every hub process prunes (the delivery worker calls :func:`prune` every
``webhook_prune_seconds``), so replicas run it at once. That is safe because
finished rows never change again, and each batch is one short transaction
that deletes rows by id: on PostgreSQL the batch is chosen with ``FOR UPDATE
SKIP LOCKED`` (two pruners take disjoint rows and never wait on, or deadlock
with, each other); SQLite serializes the writes, and a batch is a single
``DELETE`` statement, so it never reads a snapshot that another writer has
moved. A pass deletes at most ``BATCH * MAX_BATCHES`` rows.

No index is added: the age bound reads the ``(status, next_attempt_at)``
index (a finished row's ``next_attempt_at`` is at most its finish plus one
claim, so ``next_attempt_at < cutoff + claim`` holds every row to delete),
and the cap counts finished rows per hook (one scan of the history, which
the age bounds) and sorts only the rows of hooks over their cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, exists, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import Select
from sqlmodel import Session

from peft_hub.hub.config import Settings
from peft_hub.hub.models import WebhookDelivery, WebhookEvent, utcnow

#: A delivery in one of these states is never sent again.
FINISHED = ("delivered", "failed", "skipped")
#: Rows deleted per transaction.
BATCH = 500
#: Batches per pass, per rule; the rest waits for the next pass.
MAX_BATCHES = 20
#: Hooks over their cap looked at per pass (all of them share ``MAX_BATCHES``).
MAX_HOOKS = 100
#: An event left without deliveries this long is deleted, whatever the retention settings.
ORPHAN_GRACE = timedelta(hours=1)
#: The Core tables the statements use.
_D: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
_E: Table = WebhookEvent.__table__  # type: ignore[attr-defined]


@dataclass
class Pruned:
    """What one pass deleted."""

    by_age: int = 0
    over_cap: int = 0
    events: int = 0
    #: Whether a rule stopped at ``MAX_BATCHES`` (or ``MAX_HOOKS``) with more to delete.
    more: bool = False

    @property
    def deliveries(self) -> int:
        return self.by_age + self.over_cap


def _delete_batch(engine: Engine, chosen: Select) -> tuple[int, int]:
    """Delete the deliveries ``chosen`` (a limited SELECT of their ids) picks,
    and the events that leaves without deliveries; how many of each went."""
    d, e = _D, _E
    if engine.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    with Session(engine) as session:
        # one statement picks and deletes: SQLite takes its write lock before it reads
        event_ids = [row[0] for row in session.execute(
            delete(d).where(d.c.id.in_(chosen.scalar_subquery())).returning(d.c.event_id))]
        events = 0
        if event_ids:
            orphan = ~exists().where(d.c.event_id == e.c.id)
            events = len(session.execute(delete(e).where(e.c.id.in_(sorted(set(event_ids))), orphan)
                                         .returning(e.c.id)).all())
        session.commit()
    return len(event_ids), events


def _batches(engine: Engine, chosen: Select, done: Pruned, budget: int) -> tuple[int, int]:
    """Run :func:`_delete_batch` until a batch comes short or ``budget`` batches ran
    (then ``done.more``); the deliveries deleted and the batches run (events are added to ``done``)."""
    total = 0
    for number in range(1, budget + 1):
        count, events = _delete_batch(engine, chosen)
        total, done.events = total + count, done.events + events
        if count < BATCH:
            return total, number
    done.more = True
    return total, budget


def _old(cutoff: datetime, slack: timedelta) -> Select:
    """Finished deliveries that finished before ``cutoff`` (``slack``: one claim, see the module doc)."""
    d = _D
    return (select(d.c.id).where(d.c.status.in_(FINISHED), d.c.next_attempt_at < cutoff + slack,
                                 d.c.finished_at < cutoff).limit(BATCH))


def _over_cap(hook_id: int, cap: int) -> Select:
    """Finished deliveries of ``hook_id`` past its ``cap`` newest (the listing's order), oldest
    first, so a pass that stops early leaves no gap in what the listing shows."""
    d = _D
    mine = (d.c.webhook_id == hook_id) & d.c.status.in_(FINISHED)
    kept = select(d.c.id).where(mine).order_by(d.c.created_at.desc(), d.c.id).limit(cap)
    return (select(d.c.id).where(mine, d.c.id.not_in(kept.scalar_subquery()))
            .order_by(d.c.created_at, d.c.id.desc()).limit(BATCH))


def _hooks_over(engine: Engine, cap: int) -> list[int]:
    """Hooks with more than ``cap`` finished deliveries, the most first (so a
    pass that stops early has trimmed the largest), at most ``MAX_HOOKS + 1``."""
    d = _D
    counted = func.count()
    with Session(engine) as session:
        query = (select(d.c.webhook_id).where(d.c.status.in_(FINISHED)).group_by(d.c.webhook_id)
                 .having(counted > cap).order_by(counted.desc(), d.c.webhook_id).limit(MAX_HOOKS + 1))
        return [row[0] for row in session.execute(query)]


def _orphan_events(cutoff: datetime) -> Select:
    """Events created before ``cutoff`` that no delivery references (two pruners
    that deleted an event's last deliveries at once may each have left it)."""
    d, e = _D, _E
    return (select(e.c.id).where(e.c.created_at < cutoff, ~exists().where(d.c.event_id == e.c.id))
            .limit(BATCH))


def _delete_events(engine: Engine, chosen: Select, done: Pruned) -> None:
    """Delete the events ``chosen`` picks, in batches, counting them in ``done``."""
    e = _E
    if engine.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    for _ in range(MAX_BATCHES):
        with Session(engine) as session:
            count = len(session.execute(delete(e).where(e.c.id.in_(chosen.scalar_subquery()))
                                        .returning(e.c.id)).all())
            session.commit()
        done.events += count
        if count < BATCH:
            return
    done.more = True


def prune(engine: Engine, settings: Settings, *, now: datetime | None = None) -> Pruned:
    """Delete the finished deliveries past the settings' age and per-hook cap, in batches.

    Args:
        now: the time the age is measured from (default: now).

    Returns:
        What was deleted; ``more`` when a bound on one pass stopped it early.
    """
    now = utcnow() if now is None else now
    done = Pruned()
    if settings.webhook_history_days > 0:
        cutoff = now - timedelta(days=settings.webhook_history_days)
        slack = timedelta(seconds=settings.webhook_claim_seconds)
        done.by_age, _ = _batches(engine, _old(cutoff, slack), done, MAX_BATCHES)
    cap = settings.webhook_history_per_hook
    if cap > 0:
        hooks, budget = _hooks_over(engine, cap), MAX_BATCHES  # one budget for all hooks
        done.more |= len(hooks) > MAX_HOOKS
        for hook_id in hooks[:MAX_HOOKS]:
            if budget == 0:
                done.more = True
                break
            count, ran = _batches(engine, _over_cap(hook_id, cap), done, budget)
            done.over_cap, budget = done.over_cap + count, budget - ran
    # Whatever the retention: an event no delivery references is shown nowhere (events are only
    # made with deliveries, in one transaction; two pruners at once may each leave one behind).
    _delete_events(engine, _orphan_events(now - ORPHAN_GRACE), done)
    return done
