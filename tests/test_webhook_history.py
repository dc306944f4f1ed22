"""The webhook delivery history is pruned: finished deliveries past the age
or their hook's cap go, pending ones (due, in flight, waiting for a retry)
never do, a pass runs in bounded batches, two pruners at once delete each
row once and agree on what is left, and the delivery worker runs the prune.
On SQLite and on PostgreSQL, against migrated databases.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from peft_hub.hub import webhook_history
from peft_hub.hub.config import Settings
from peft_hub.hub.models import Namespace, Webhook, WebhookDelivery, WebhookEvent, utcnow
from peft_hub.hub.webhooks import DeliveryWorker

pytestmark = pytest.mark.integration

NOW = utcnow()


@pytest.fixture
def engine(migrated_engine):
    return migrated_engine


def settings(**overrides) -> Settings:
    return Settings(**{"db_url": "sqlite://", "storage": "/nonexistent", "webhook_history_days": 30,
                       "webhook_history_per_hook": 1000, **overrides})


class Rows:
    """Builds hooks, events and deliveries with chosen states and times."""

    def __init__(self, engine) -> None:
        self.engine = engine
        with Session(engine) as session:
            user = Namespace(name=f"u{uuid.uuid4().hex[:8]}")
            session.add(user)
            session.commit()
            self.user_id = user.id

    def hook(self) -> int:
        with Session(self.engine) as session:
            hook = Webhook(user_id=self.user_id, url="http://example.com/", secret="s" * 16, owner="acme",
                           events=["push"])
            session.add(hook)
            session.commit()
            return hook.id

    def event(self, created_days_ago: float = 0) -> str:
        created = NOW - timedelta(days=created_days_ago)
        with Session(self.engine) as session:
            event = WebhookEvent(id=str(uuid.uuid4()), kind="push", owner="acme", name="x",
                                 timestamp=created.isoformat(), created_at=created)
            session.add(event)
            session.commit()
            return event.id

    def delivery(self, hook_id: int, status: str, *, age_days: float, event_id: str | None = None,
                 due_in: float = 0) -> str:
        """A delivery created ``age_days`` ago; a finished one finished then, as the worker leaves it
        (``next_attempt_at`` a claim past its send); a pending one due ``due_in`` seconds from now."""
        at = NOW - timedelta(days=age_days)
        finished = status != "pending"
        row = WebhookDelivery(
            id=str(uuid.uuid4()), webhook_id=hook_id, event_id=event_id or self.event(age_days), status=status,
            attempts=1, created_at=at, finished_at=at if finished else None,
            next_attempt_at=at + timedelta(seconds=30) if finished else NOW + timedelta(seconds=due_in))
        delivery_id = row.id
        with Session(self.engine) as session:
            session.add(row)
            session.commit()
        return delivery_id


def delivery_ids(engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(WebhookDelivery.id)).all())


def event_ids(engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(WebhookEvent.id)).all())


def events_of(engine, ids: set[str]) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(WebhookDelivery.event_id).where(WebhookDelivery.id.in_(ids))).all())


def test_prune_deletes_old_and_over_cap_finished_rows_only(engine):
    rows = Rows(engine)
    a, b = rows.hook(), rows.hook()
    old = {rows.delivery(a, status, age_days=40) for status in ("delivered", "failed", "skipped")}
    old.add(rows.delivery(a, "delivered", age_days=30.01))
    shared = rows.event(40)  # one event, two hooks: it stays while a delivery of it does
    old.add(rows.delivery(a, "delivered", age_days=40, event_id=shared))
    kept = {
        rows.delivery(b, "pending", age_days=40, event_id=shared),  # retryable, long overdue
        rows.delivery(a, "pending", age_days=40, due_in=3600),  # waiting for its retry
        rows.delivery(a, "pending", age_days=35, due_in=60),  # in flight: claimed by a worker
        rows.delivery(a, "delivered", age_days=29.9),
        rows.delivery(a, "failed", age_days=1),
    }
    # hook b: a cap of 3 keeps its 3 newest finished deliveries; its pending ones do not count
    newest = [rows.delivery(b, "delivered", age_days=day) for day in (0.1, 0.2, 0.3)]
    over = {rows.delivery(b, status, age_days=day) for status, day in (("failed", 0.4), ("skipped", 2))}
    kept |= set(newest) | {rows.delivery(b, "pending", age_days=3)}
    events_before, events_kept = event_ids(engine), events_of(engine, kept)
    done = webhook_history.prune(engine, settings(webhook_history_per_hook=3), now=NOW)
    assert delivery_ids(engine) == kept
    assert (done.by_age, done.over_cap, done.more) == (len(old), len(over), False)
    assert shared in events_kept and event_ids(engine) == events_kept  # each event goes with its last delivery
    assert done.events == len(events_before - events_kept) > 0
    # a second pass has nothing left to do
    again = webhook_history.prune(engine, settings(webhook_history_per_hook=3), now=NOW)
    assert (again.deliveries, again.events) == (0, 0) and delivery_ids(engine) == kept




def test_zero_settings_keep_everything(engine):
    rows = Rows(engine)
    hook = rows.hook()
    ids = {rows.delivery(hook, "delivered", age_days=400 + i) for i in range(5)}
    done = webhook_history.prune(engine, settings(webhook_history_days=0, webhook_history_per_hook=0), now=NOW)
    assert done.deliveries == 0 and delivery_ids(engine) == ids


def test_a_pass_runs_in_bounded_batches(engine, monkeypatch):
    monkeypatch.setattr(webhook_history, "BATCH", 3)
    monkeypatch.setattr(webhook_history, "MAX_BATCHES", 2)
    rows = Rows(engine)
    hook = rows.hook()
    fresh = rows.delivery(hook, "delivered", age_days=1)
    for _ in range(10):
        rows.delivery(hook, "delivered", age_days=50)
    first = webhook_history.prune(engine, settings(), now=NOW)
    assert (first.by_age, first.more) == (6, True) and len(delivery_ids(engine)) == 5
    second = webhook_history.prune(engine, settings(), now=NOW)
    assert (second.by_age, second.more) == (4, False) and delivery_ids(engine) == {fresh}


def test_the_cap_shares_one_batch_budget_largest_hook_first(engine, monkeypatch):
    monkeypatch.setattr(webhook_history, "BATCH", 3)
    monkeypatch.setattr(webhook_history, "MAX_BATCHES", 2)
    rows = Rows(engine)
    small, large = rows.hook(), rows.hook()  # the smaller id is looked at second: it has fewer rows
    small_rows = [rows.delivery(small, "delivered", age_days=i / 10) for i in range(3)]
    large_rows = [rows.delivery(large, "skipped", age_days=i / 10) for i in range(8)]
    capped = settings(webhook_history_per_hook=1)
    first = webhook_history.prune(engine, capped, now=NOW)
    assert (first.over_cap, first.more) == (6, True)
    assert delivery_ids(engine) == set(small_rows) | set(large_rows[:2])
    second = webhook_history.prune(engine, capped, now=NOW)
    assert (second.over_cap, second.more) == (3, False)
    assert delivery_ids(engine) == {small_rows[0], large_rows[0]}  # each hook's newest


def test_two_pruners_at_once_agree(engine, monkeypatch):
    monkeypatch.setattr(webhook_history, "BATCH", 7)
    monkeypatch.setattr(webhook_history, "MAX_BATCHES", 1000)
    rows = Rows(engine)
    hooks = [rows.hook() for _ in range(3)]
    kept = set()
    for number, hook in enumerate(hooks):
        for i in range(40):
            rows.delivery(hook, "delivered", age_days=60 + i)  # by age
        over = [rows.delivery(hook, "failed", age_days=1 + i / 100) for i in range(25)]
        kept |= set(over[:10])  # the cap of 10 keeps the newest
        kept.add(rows.delivery(hook, "pending", age_days=90, due_in=number))
    before = len(delivery_ids(engine))
    start, results = threading.Barrier(2), []

    def run() -> None:
        start.wait()
        results.append(webhook_history.prune(engine, settings(webhook_history_per_hook=10), now=NOW))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2, "a pruner failed"
    assert delivery_ids(engine) == kept
    assert sum(r.deliveries for r in results) == before - len(kept)  # each row deleted once
    assert sum(r.by_age for r in results) == 3 * 40 and sum(r.over_cap for r in results) == 3 * 15


def test_the_delivery_worker_prunes(engine):
    rows = Rows(engine)
    hook = rows.hook()
    old = rows.delivery(hook, "delivered", age_days=45)
    pending = rows.delivery(hook, "pending", age_days=45, due_in=3600)

    async def run() -> None:
        worker = DeliveryWorker(engine, settings(webhook_poll_seconds=0.05, webhook_prune_seconds=0.1))
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while old in await asyncio.to_thread(delivery_ids, engine) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()

    asyncio.run(run())
    assert delivery_ids(engine) == {pending}


def test_orphan_events_go_whatever_the_retention_and_a_deleted_hook_takes_its_own(engine):
    """An event no delivery references is shown nowhere: it goes after an hour
    even when the history is kept forever; deleting a hook deletes its
    deliveries and the events only it needed, keeping those another hook's
    delivery still references."""
    from peft_hub.hub import events

    rows = Rows(engine)
    a, b = rows.hook(), rows.hook()
    old_orphan, new_orphan = rows.event(created_days_ago=0.1), rows.event(created_days_ago=0.01)
    shared = rows.event(1)
    mine = {rows.delivery(a, "delivered", age_days=400), rows.delivery(a, "pending", age_days=1, event_id=shared)}
    theirs = rows.delivery(b, "delivered", age_days=1, event_id=shared)
    only_a = events_of(engine, mine) - {shared}
    done = webhook_history.prune(engine, settings(webhook_history_days=0, webhook_history_per_hook=0), now=NOW)
    assert done.deliveries == 0 and done.events == 1
    assert old_orphan not in event_ids(engine) and new_orphan in event_ids(engine)
    with Session(engine) as session:
        events.delete_webhook(session, hook=session.get(Webhook, a))
        session.commit()
    assert delivery_ids(engine) == {theirs}
    assert shared in event_ids(engine) and not only_a & event_ids(engine)
