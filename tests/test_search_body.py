"""PostgreSQL's text body (``adapter.fts_body``, migration 0015, and
``adapter.fts_squeezed``, 0016, the body without its ASCII punctuation and
spaces) answers ``q=`` exactly as the four per-field LIKEs did, and stays
exact through every write.

On PostgreSQL every query goes through the body column (a literal one
alone, one with wildcards narrowed by it and decided by the per-field
test); on SQLite the same clause is the old plan. Both backends compare every page, total and facet with the reference
logic of tests/test_search_speed.py over rows with non-ASCII text ('ß',
'İ', final sigma, combining marks), NULL and empty fields, and text that
would match only across two fields. Random writes (the hub's, raw SQL,
edits of each searched field, id changes, deletes) leave the body equal to
a live recomputation of 0011's joined string, and its squeezed form equal
to Python's squeezing of it (a query is squeezed in Python); the
migrations go down to 0011's side table and up again.
"""

from __future__ import annotations

import importlib
import itertools
import random
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert, text, update
from sqlmodel import Session, col, select
from test_search_speed import old_facets, old_filters, old_search
from test_search_summary import hub_write, raw_write

from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import facet_counts as facets_mod
from peft_hub.hub.crud import search as new
from peft_hub.hub.crud import search_sql
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import Adapter, Namespace, name_key

OWNERS = ["alice", "Bob", "ACME", "xy"]
# (name, base model, description; only the base model may be NULL): field starts and ends, text across two
# fields, non-ASCII.
TEXTS = [("ab", None, ""), ("qa-tune", "org/qa", ""), ("Straße", "İstanbul/x", "ΟΔΟΣ final σ"),
         ("cafe\u0301", "ΣΊΣΥΦΟΣ", "naïve ß"), ("x", "y", "zq"), ("end-qa", None, "QA at start"),
         ("a.b", "c-d", "50% off"), ("under_s", "back\\s", "tab\there"), ("Ab", "ab", "ab"), ("k", "", ""),
         ("p!q#r", "s~t", "u{v}|w^`x'\"y;z")]
QS = ["qa", "QA", "q", "a", "b", "ab", "bx", "xy", "yz", "x\x1fy", "b\x1fo", "ß", "SS", "ss", "straß", "İ", "i̇",
      "i", "σ", "ς", "Σ", "ος", "e\u0301", "\u0301", "é", "ï", "ΣΊ", "a.", ".b", "c-d", "-d", "%", "a%", "_", "a_",
      "\\", "k\\", "\t", "50", "t", "e", "-", "zq", "ü", "İs", "A",
      # three letters or digits in a row: the body's trigram index, literal or with wildcards
      "qa-tune", "tune", "STRASSE", "straße", "final σ", "ΟΔΟΣ", "naïve", "50% off", "0% o", "under_s", "der_",
      "back\\s", "ab1%", "ab%ab", "end%start", "qa1", "a.b1", "x\x1fyz",
      # punctuation or spaces between them: the squeezed body finds the rows, the body decides
      "QA-Tune", "end-qa", "qa at", "at start", "b-ab", "b ab", "tab\there", "p!q#r", "q#r", "x'\"y", "a.b-1"]
#: PostgreSQL refuses NUL in text, in the old query as in the new: SQLite alone is asked.
NUL = "x\x00"


def body_rows(conn, *, side_table: bool = False) -> tuple[list, list]:
    """What the body column (or 0011's side table) holds, and what it should hold (0011's string, live)."""
    m = importlib.import_module("peft_hub.hub.alembic.versions.0011_text_body")
    stored = conn.execute(text(f"SELECT id, body FROM {m.TABLE} ORDER BY id" if side_table else
                               f"SELECT id, {search_sql.BODY_COLUMN} FROM adapter ORDER BY id")).all()
    live = conn.execute(text(f"SELECT adapter.id, {m.body('adapter')} FROM adapter ORDER BY adapter.id")).all()
    return [tuple(r) for r in stored], [tuple(r) for r in live]


def seed(engine, rows: int = 60) -> None:
    rng = random.Random(11)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(1, rows + 1):
        owner = OWNERS[i % len(OWNERS)]
        name, base, description = TEXTS[i % len(TEXTS)]
        name = f"{name}{i}" if i > len(TEXTS) else name
        out.append({"id": i, "owner": owner, "name": name, "name_key": name_key(owner, name),
                    "private": rng.random() < 0.3, "kind": "adapter", "downloads": i % 4, "created_at": t0,
                    "updated_at": t0, "base_model": base, "method": rng.choice(["LORA", "IA3", None]),
                    "rank": 8, "max_rank": 8, "total_size": 1, "target_modules": [], "description": description})
    with engine.begin() as conn:
        conn.execute(insert(Namespace), [{"name": o, "name_key": o.lower(), "kind": "user", "is_admin": False,
                                          "created_at": t0} for o in OWNERS])
        conn.execute(insert(Adapter), out)
        if conn.dialect.name == "postgresql":  # the ids were given: the next insert's comes after them
            conn.execute(text("SELECT setval('adapter_id_seq', :n)"), {"n": rows})


@pytest.fixture
def engine(migrated_engine):
    return migrated_engine


def principals():
    return [None, Principal(user=Namespace(name="alice"), scope="read", orgs={"ACME"}),
            Principal(user=Namespace(name="root", is_admin=True), scope="admin")]


def assert_same(session, qs=QS) -> int:
    """Every page, total and facet for ``qs``, new against old; how many matched something."""
    matched = 0
    if session.get_bind().dialect.name == "sqlite":
        qs = [*qs, NUL]
    for who, q in itertools.product(principals(), qs):
        for sort, page in (("updated", 1), ("name", 2)):
            want = old_search(session, clauses=old_filters(principal=who, q=q), sort=sort, page=page, per_page=4)
            items, total, exact = new.search_adapters(session, clauses=new.search_filters(principal=who, q=q),
                                                      sort=sort, page=page, per_page=4)
            assert ([a.id for a in items], total) == want and exact, (who, q, sort, page)
            matched += want[1] > 0
        clauses = new.search_filters(principal=who, q=q)
        assert facets_mod.facets(session, clauses=clauses) == old_facets(
            session, clauses=old_filters(principal=who, q=q)), (who, q)
    return matched


def test_short_queries_return_what_the_field_likes_returned(engine):
    seed(engine)
    with Session(engine) as session:
        assert assert_same(session) > 60


def test_each_query_reads_the_body_as_its_characters_allow(engine):
    """On PostgreSQL: a literal q is decided by the body alone, one with a wildcard (or the escape
    character, the separator) also by the per-field test; a q without three letters or digits in a row
    reads the column off its trigram index. On SQLite, none of it."""
    statements: list[str] = []
    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    seed(engine, rows=12)
    body, off_index, per_field = f"adapter.{search_sql.BODY_COLUMN}", f"(adapter.{search_sql.BODY_COLUMN} || '')", \
        "lower(adapter.description)"
    with Session(engine) as session:
        for q, exact, indexed in (("qa", True, False), ("ß", True, False), ("a.b", True, False),
                                  ("legal", True, True), ("İstanbul", True, True), ("a%", False, False),
                                  ("a_", False, False), ("a\\", False, False), ("x\x1fy", False, False),
                                  ("abc%de", False, True), ("under_s", False, True), (NUL, False, False)):
            if q == NUL and engine.dialect.name == "postgresql":
                continue
            statements.clear()
            new.count_adapters(session, clauses=new.search_filters(principal=None, q=q))
            (count,) = statements
            if engine.dialect.name != "postgresql":
                assert search_sql.BODY_COLUMN not in count, q
                continue
            assert (off_index in count) == (not indexed) and body in count, (q, count)
            assert (per_field in count) == (not exact), (q, count)
            assert search_sql.SQUEEZED_COLUMN not in count, (q, count)
        # A literal ASCII q with punctuation or spaces and three letters or digits squeezed: found by the
        # squeezed body's index, decided by the body read off its own.
        for q in ("qa-tune", "a.b1", "QA at", "end-q"):
            statements.clear()
            new.count_adapters(session, clauses=new.search_filters(principal=None, q=q))
            (count,) = statements
            if engine.dialect.name == "postgresql":
                squeezed = f"adapter.{search_sql.SQUEEZED_COLUMN} LIKE"
                assert squeezed in count and off_index in count and per_field not in count, (q, count)
                assert f"{body} LIKE" not in count, (q, count)


def field_write(engine, rng: random.Random, step: int) -> None:
    """An edit of one searched field (or the id) on a few rows, in raw SQL."""
    with engine.begin() as conn:
        ids = conn.execute(select(Adapter.id)).scalars().all()
        if not ids:
            return
        chosen = col(Adapter.id).in_(rng.sample(ids, min(len(ids), rng.randrange(1, 3))))
        column = rng.choice(["name", "description", "base_model", "owner", "id", "downloads"])
        if column == "id":  # of a row nothing refers to (no revision, no tag)
            used = set(conn.execute(text("SELECT adapter_id FROM revision UNION SELECT adapter_id FROM tag")).scalars())
            free = [i for i in ids if i not in used]
            if not free:
                return
            one = rng.choice(free)
            conn.execute(update(Adapter).where(col(Adapter.id) == one).values(id=max(ids) + 1000 + step))
            return
        if column in ("owner", "name"):  # of one row, to a value of its own: (owner, name) stays unique
            chosen = col(Adapter.id) == rng.choice(ids)
        value = {"owner": f"{rng.choice(OWNERS)}-{step}", "downloads": step}.get(
            column, rng.choice([*TEXTS[step % 10], "QA"]))
        if value is None and column != "base_model":
            value = ""
        if column == "name":
            value = f"{value or 'n'}-{step}"  # (owner, name) stays unique
        conn.execute(update(Adapter).where(chosen).values({column: value}))


def assert_body_exact(engine) -> None:
    if engine.dialect.name != "postgresql":
        return  # no body column on SQLite: the search comparison alone
    with engine.connect() as conn:
        stored, live = body_rows(conn)
        squeezed = conn.execute(text(f"SELECT id, {search_sql.SQUEEZED_COLUMN} FROM adapter ORDER BY id")).all()
    assert stored == live
    assert [tuple(r) for r in squeezed] == [(i, search_sql.SQUEEZED_OUT.sub("", body)) for i, body in live]


def test_random_writes_keep_the_body_exact(engine):
    seed(engine, rows=20)
    rng = random.Random(5)
    with Session(engine) as session:
        for step in range(36):
            if step % 3 == 0:
                hub_write(session, rng, step)
            elif step % 3 == 1:
                raw_write(engine, rng, step)
            elif step % 3 == 2:
                field_write(engine, rng, step)
            assert_body_exact(engine)
            if step % 6 == 5:
                session.expire_all()
                assert_same(session, ["qa", "a", "ß", "-", "σ", "ab", "x"])


def test_migrations_down_and_up_backfill_the_body_and_its_squeezed_form(engine):
    from alembic import command
    from sqlalchemy import inspect

    from peft_hub.hub.alembic import config

    seed(engine, rows=15)
    with engine.begin() as conn:
        command.downgrade(config(conn), "0015")
    columns = {c["name"] for c in inspect(engine).get_columns("adapter")}
    assert search_sql.SQUEEZED_COLUMN not in columns
    assert (search_sql.BODY_COLUMN in columns) == (engine.dialect.name == "postgresql")
    with engine.begin() as conn:
        command.downgrade(config(conn), "0014")
    columns = {c["name"] for c in inspect(engine).get_columns("adapter")}
    assert search_sql.BODY_COLUMN not in columns
    if engine.dialect.name == "postgresql":  # 0011's side table again, filled
        with engine.connect() as conn:
            stored, live = body_rows(conn, side_table=True)
        assert stored == live and len(stored) == 15
    with engine.begin() as conn:
        command.downgrade(config(conn), "0010")
        conn.execute(update(Adapter).where(col(Adapter.id) < 5).values(description="QA later"))
    upgrade(engine)
    assert not inspect(engine).has_table("adapter_fts_body")
    assert_body_exact(engine)
    with Session(engine) as session:
        assert assert_same(session, ["qa", "ß"]) > 0
