"""Webhook history prune racing hook deletions, on SQLite and PostgreSQL.

Two pruners and a thread deleting hooks (``events.delete_webhook``, what
``DELETE /api/webhooks/{id}`` runs) start together over hooks that share
events. None may fail (no deadlock, no stale-row error), a deleted hook
leaves no delivery behind, the other hooks keep every pending delivery and
their newest finished ones, and an event is gone only when no delivery that
is left references it.
"""

from __future__ import annotations

import threading

from sqlalchemy import text
from sqlmodel import Session
from test_webhook_history import NOW, Rows, delivery_ids, settings

from peft_hub.hub import events, webhook_history
from peft_hub.hub.models import Webhook


def test_pruners_and_hook_deletions_at_once_keep_what_they_must(migrated_engine, monkeypatch):
    engine = migrated_engine
    monkeypatch.setattr(webhook_history, "BATCH", 5)
    monkeypatch.setattr(webhook_history, "MAX_BATCHES", 1000)
    rows = Rows(engine)
    hooks = [rows.hook() for _ in range(6)]
    doomed, spared = hooks[:3], hooks[3:]
    kept: set[str] = set()
    for i in range(12):  # events shared by every hook: a deletion and a prune both reach them
        shared = rows.event(created_days_ago=40 + i)
        for hook in hooks:
            rows.delivery(hook, "delivered", age_days=40 + i, event_id=shared)  # past the age: pruned
    for hook in hooks:
        newest = [rows.delivery(hook, "failed", age_days=1 + i / 100) for i in range(8)]
        pending = {rows.delivery(hook, "pending", age_days=50, due_in=60 * i) for i in range(3)}
        if hook in spared:
            kept |= set(newest[:4]) | pending  # the cap of 4 keeps the newest; pending rows stay
    start, failures = threading.Barrier(3), []

    def prune() -> None:
        start.wait()
        try:
            webhook_history.prune(engine, settings(webhook_history_per_hook=4), now=NOW)
        except Exception as exc:  # reported below
            failures.append(exc)

    def delete_hooks() -> None:
        start.wait()
        try:
            for hook_id in doomed:
                with Session(engine) as session:
                    events.delete_webhook(session, hook=session.get(Webhook, hook_id))
                    session.commit()
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=prune), threading.Thread(target=prune), threading.Thread(target=delete_hooks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a pruner or a deletion hangs"
    assert failures == []
    assert delivery_ids(engine) == kept
    with engine.connect() as conn:
        left_hooks = {r[0] for r in conn.execute(text("SELECT id FROM webhook"))}
        dangling = conn.execute(text(
            "SELECT d.id FROM webhookdelivery d LEFT JOIN webhookevent e ON e.id = d.event_id WHERE e.id IS NULL"
        )).all()
    assert left_hooks == set(spared) and dangling == []
