"""Attacks on PostgreSQL's text body (migration 0011): writes that bypass a
row trigger, odd queries, and the migration run down and up with data.

The body must give exactly the rows the four per-field LIKEs gave (the
reference of tests/test_search_speed.py), whatever wrote ``adapter``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import insert, text
from sqlmodel import Session
from test_search_body import assert_body_exact, assert_same, body_rows, seed

from peft_hub.hub.db import make_engine
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import Adapter

pytestmark = pytest.mark.integration

#: Queries the neighbouring tests do not ask: separators and wildcards alone, spaces, combining marks alone,
#: a long run of short words (no trigram), a very long one.
ODD = ["\x1f", "\x1f\x1f", " ", "   ", "a b", "\u0301\u0301", "-" * 2000, "a " * 600, "%%", "__", "\\\\", "\\%",
       "\x7f", "\u200b", "\ufeff", "\u00a0", "\r\n", "'", "''", "\"", ";", "--"]


@pytest.fixture
def engine(request, tmp_path):
    from conftest import database_url

    engine = make_engine(database_url("postgres", tmp_path, request))
    upgrade(engine)
    yield engine
    engine.dispose()


def test_odd_short_queries_return_what_the_field_likes_returned(engine):
    seed(engine, rows=24)
    with engine.begin() as conn:  # fields holding the separator, spaces and the odd characters asked for
        conn.execute(text("UPDATE adapter SET description = :d WHERE id = 3"), {"d": "a\x1fb   \u200b x"})
        conn.execute(text("UPDATE adapter SET base_model = :d WHERE id = 4"), {"d": "-" * 2100 + "\r\n'\""})
        conn.execute(text("UPDATE adapter SET description = :d WHERE id = 5"), {"d": "a " * 700 + "\u00a0;--"})
    assert_body_exact(engine)
    with Session(engine) as session:
        assert assert_same(session, ODD) > 0


def _new_row(i: int) -> dict:
    from datetime import datetime, timezone

    from peft_hub.hub.models import name_key

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return {"id": i, "owner": "alice", "name": f"fresh-{i}", "name_key": name_key("alice", f"fresh-{i}"),
            "private": False, "kind": "adapter", "downloads": 0, "created_at": t0, "updated_at": t0,
            "base_model": "m", "method": "LORA", "rank": 8, "max_rank": 8, "total_size": 1, "target_modules": [],
            "description": "fresh"}


def test_a_truncate_of_adapter_leaves_no_stale_body(engine):
    """``TRUNCATE`` fires no row trigger: an operator's reset of the table (or a
    restore that truncates first) must not leave bodies behind, which would
    refuse the next adapter that gets an old id and match rows by text that
    is no longer theirs."""
    seed(engine, rows=8)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE adapter RESTART IDENTITY CASCADE"))
    with engine.begin() as conn:  # the same ids again: refused today by the body's primary key
        conn.execute(insert(Adapter), [_new_row(i) for i in range(1, 4)])
    assert_body_exact(engine)
    with engine.connect() as conn:
        assert body_rows(conn)[0] == [(i, f"fresh-{i}\x1falice\x1fm\x1ffresh") for i in range(1, 4)]
