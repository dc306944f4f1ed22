"""Search after #15's indexes and query changes returns what it returned
before: the same rows in the same order, the same totals, the same facet
counts. The query logic as it was (commit ef4bc04) is copied here as the
reference and run against the new on one seeded database, on SQLite and
PostgreSQL, for every principal kind, with ties in every sort key and text
queries that match names, owners, base models and descriptions in any case,
wildcards and backslashes included.
"""

from __future__ import annotations

import itertools
import random
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import String, cast, func, insert, or_, true
from sqlmodel import Session, col, select
from starlette.datastructures import QueryParams

from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import facet_counts as facets_mod
from peft_hub.hub.crud import search as new
from peft_hub.hub.crud import search_sql
from peft_hub.hub.db import make_engine
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import Adapter, Namespace, Tag
from peft_hub.hub.web import catalog

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


# --- the reference: the query logic as it was ---------------------------------------------


def old_visible(principal):
    if principal is None:
        return col(Adapter.private) == False  # noqa: E712
    owned = principal.owned_namespaces()
    if owned is None:
        return true()
    return or_(col(Adapter.private) == False, func.lower(col(Adapter.owner)).in_(sorted(owned)))  # noqa: E712


def old_filters(*, principal, q=None, base_model=None, method=None, min_rank=None, max_rank=None,
                target_module=None, owner=None, tag=None, kind=None):
    clauses = [old_visible(principal), col(Adapter.method).is_not(None)]
    if q:
        fields = [func.lower(c) for c in (Adapter.name, Adapter.owner, Adapter.base_model, Adapter.description)]
        like = f"%{q.lower()}%"
        # since 2026-12-02 a non-ASCII q also matches as the database lower-cases it (text typed as stored)
        patterns = [like] if q.isascii() else [like, func.lower(f"%{q}%")]
        clauses.append(or_(*(f.like(p) for f in fields for p in patterns)))
    if base_model:
        clauses.append(Adapter.base_model == base_model)
    if method:
        clauses.append(func.upper(Adapter.method) == method.upper())
    if min_rank is not None:
        clauses.append(col(Adapter.max_rank) >= min_rank)
    if max_rank is not None:
        clauses.append(col(Adapter.rank) <= max_rank)
    if owner:
        clauses.append(func.lower(Adapter.owner) == owner.lower())
    if kind:
        clauses.append(col(Adapter.kind) == kind.lower())
    if tag:
        clauses.append(col(Adapter.id).in_(select(Tag.adapter_id).where(Tag.name == tag)))
    if target_module:
        clauses.append(cast(Adapter.target_modules, String).like(f'%"{target_module}"%'))
    return clauses


OLD_SORTS = {"updated": col(Adapter.updated_at), "downloads": col(Adapter.downloads), "name": col(Adapter.name),
             "rank": col(Adapter.rank), "size": col(Adapter.total_size)}


def old_search(session, *, clauses, sort="updated", order="desc", page=1, per_page=20):
    column = OLD_SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), col(Adapter.id).asc()]
    total = session.exec(select(func.count()).select_from(Adapter).where(*clauses)).one()
    items = session.exec(
        select(Adapter).where(*clauses).order_by(*ordering).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return [a.id for a in items], total


def old_facets(session, *, clauses):
    out = {}
    for name, column in (("base_model", col(Adapter.base_model)), ("method", col(Adapter.method)),
                         ("owner", col(Adapter.owner)), ("kind", col(Adapter.kind))):
        rows = session.exec(
            select(column, func.count()).where(*clauses).group_by(column).order_by(func.count().desc(), column)
        ).all()
        out[name] = [(value, count) for value, count in rows if value]
    return out


# --- the data ----------------------------------------------------------------------------------

OWNERS = ["alice", "Bob", "ACME", "carol", "dave-99"]
BASES = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "mistralai/Mistral-7B", None]
WORDS = ["legal", "Legal", "LEGAL", "med_ical", "summary", "qwen-chat", "Ärzte", "code"]
DESCRIPTIONS = ["", "A LEGAL helper.", "50% off", "under_score here", "back\\slash", "Übersetzung für ÄRZTE",
                "llama tuned", "nothing"]
METHODS = ["LORA", "LORA", "IA3", "lora", "LOHA", "model", None]


def seed(engine) -> None:
    rng = random.Random(15)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows, tags = [], []
    for i in range(1, 241):
        owner, method = rng.choice(OWNERS), rng.choice(METHODS)
        name = f"{rng.choice(WORDS)}-{i % 37}"  # the same name under several owners
        if any(r["name_key"] == f"{owner}/{name}".lower() for r in rows):
            name += f"-{i}"
        rows.append({
            "id": i, "owner": owner, "name": name, "name_key": f"{owner}/{name}".lower(),
            "private": rng.random() < 0.25, "kind": "model" if method == "model" else "adapter",
            "downloads": rng.choice([0, 0, 3, 10]), "created_at": t0,
            "updated_at": t0 + timedelta(hours=rng.choice([0, 1, 2, 3])),  # ties in every sort key
            "base_model": None if method == "model" else rng.choice(BASES), "method": method,
            "rank": rng.choice([None, 4, 8, 16, 64]), "max_rank": rng.choice([None, 8, 16, 64]),
            "total_size": rng.choice([10, 20]), "target_modules": rng.choice([["q_proj"], ["q_proj", "v_proj"]]),
            "description": rng.choice(DESCRIPTIONS),
        })
        tags.append({"adapter_id": i, "name": "main", "revision_id": None})
        if i % 4 == 0:
            tags.append({"adapter_id": i, "name": "v1", "revision_id": None})
    # The rank walk's bounds (search_sql.rank_bounds): the only rows below rank 4 reaching max rank 16 are
    # private, one in a namespace alice owns; the int4 extremes; a NULL rank beside a max rank.
    edges = ((241, "alice", True, 3, 64), (242, "Bob", True, 2, 16), (243, "carol", False, 2**31 - 1, 2**31 - 1),
             (244, "ACME", False, None, 64), (245, "dave-99", False, -(2**31), -(2**31)))
    for i, owner, private, rank, max_rank in edges:
        rows.append({**rows[0], "id": i, "owner": owner, "name": f"edge-{i}", "name_key": f"{owner}/edge-{i}".lower(),
                     "private": private, "rank": rank, "max_rank": max_rank, "method": "LORA", "kind": "adapter"})
        tags.append({"adapter_id": i, "name": "main", "revision_id": None})
    with engine.begin() as conn:
        conn.execute(insert(Namespace), [{"name": o, "name_key": o.lower(), "kind": "user", "is_admin": False,
                                          "created_at": t0} for o in OWNERS])
        conn.execute(insert(Adapter), rows)
        from peft_hub.hub.models import Revision

        conn.execute(insert(Revision), [{"id": r["id"], "adapter_id": r["id"], "sha": f"{r['id']:040x}",
                                         "message": "", "author": "", "created_at": t0, "meta": {}} for r in rows])
        conn.execute(insert(Tag), [{**t, "revision_id": t["adapter_id"], "updated_at": t0} for t in tags])


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, tmp_path_factory):
    from conftest import database_url

    engine = make_engine(database_url(request.param, tmp_path_factory.mktemp("search"), request))
    upgrade(engine)
    seed(engine)
    yield engine
    engine.dispose()


def principals():
    alice = Principal(user=Namespace(name="alice"), scope="read", orgs={"ACME"})
    admin = Principal(user=Namespace(name="root", is_admin=True), scope="admin")
    return [None, alice, admin]


QS = [None, "legal", "LEGAL", "egal", "lla", "QWEN", "ärzte", "ÄRZTE", "über", "%", "50%", "_", "der_s", "\\",
      "back\\s", "a", "zz-none", "acme", "b", "7b", 'a"b"c', "leg*al", "NEAR(legal)"]
FILTERS = [{}, {"base_model": "Qwen/Qwen2.5-7B"}, {"method": "lora"}, {"method": "MODEL"}, {"owner": "bob"},
           {"owner": "ACME"}, {"tag": "v1"}, {"kind": "model"}, {"min_rank": 16}, {"max_rank": 8},
           {"min_rank": 8, "max_rank": 16, "method": "LORA"}, {"target_module": "v_proj"}]


def _same_page(session, who, args, sort, order, page, *, per_page):
    """One page and its total, the new way and the old: they must agree. Returns the old."""
    want = old_search(session, clauses=old_filters(principal=who, **args), sort=sort, order=order,
                      page=page, per_page=per_page)
    items, total, exact = new.search_adapters(session, clauses=new.search_filters(principal=who, **args),
                                              sort=sort, order=order, page=page, per_page=per_page)
    assert ([a.id for a in items], total) == want and exact, (who, args, sort, order, page)
    return want


@pytest.mark.parametrize("drives_at", [search_sql.SORT_DRIVES_AT, 1], ids=["candidates-drive", "sort-index-drives"])
def test_search_returns_the_same_rows_in_the_same_order_and_totals(engine, monkeypatch, drives_at):
    monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", drives_at)  # 1: every text query with a candidate walks the sort
    sorts = list(itertools.product(OLD_SORTS, ("asc", "desc")))
    checked = 0
    with Session(engine) as session:
        for who, (i, (q, filters)) in itertools.product(principals(), enumerate(itertools.product(QS, FILTERS))):
            sort, order = sorts[i % len(sorts)]
            for page in (1, 1 + i % 3, 40):
                want = _same_page(session, who, {"q": q, **filters}, sort, order, page, per_page=7)
                checked += want[1] > 0
    assert checked > 500  # most queries match something: the comparison is not of empty lists


def test_facets_are_the_same_counts_in_the_same_order(engine):
    with Session(engine) as session:
        for who, q, filters in itertools.product(principals(), QS[:8], FILTERS):
            args = {"q": q, **filters}
            want = old_facets(session, clauses=old_filters(principal=who, **args))
            clauses = new.search_filters(principal=who, **args)
            assert facets_mod.facets(session, clauses=clauses) == want, args
            assert facets_mod.facets(session, clauses=clauses, one_pass=True) == want, args
            assert facets_mod.facets(session, clauses=clauses, names=("owner", "kind"), one_pass=True) == {
                "owner": want["owner"], "kind": want["kind"]}


def test_the_catalog_counts_each_facet_without_its_own_filter(engine):
    with Session(engine) as session:
        for who, query in itertools.product(principals(), ["", "q=legal", "q=a&owner=bob", "method=LORA&kind=adapter",
                                                           "base_model=Qwen/Qwen2.5-7B&tag=v1&min_rank=8",
                                                           "owner=ACME&q=%25"]):
            parsed = catalog.CatalogQuery.parse(QueryParams(query))
            want = {f: old_facets(session, clauses=old_filters(principal=who, **parsed.filters(without=f)))[f]
                    for f in catalog.FACETS}
            assert catalog.facet_counts(session, who, parsed) == want, query


@pytest.mark.parametrize("drives_at", [search_sql.SORT_DRIVES_AT, 1], ids=["candidates-drive", "sort-index-drives"])
def test_the_catalog_total_from_the_kind_facet_is_the_count(engine, monkeypatch, drives_at):
    monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", drives_at)
    with Session(engine) as session:
        for who, query in itertools.product(principals(), ["", "q=legal", "q=a&owner=bob", "method=LORA&kind=adapter",
                                                           "tag=v1&min_rank=0", "owner=ACME&q=%25", "q=zz-none",
                                                           "kind=model", "q=egal&page=3"]):
            parsed = catalog.CatalogQuery.parse(QueryParams(query))
            want = old_search(session, clauses=old_filters(principal=who, **parsed.filters()), page=parsed.page,
                              per_page=catalog.PER_PAGE)
            facets, total = catalog.counts(session, who, parsed)
            assert total == (None if parsed.kind else want[1]), query
            items, total = catalog.search(session, who, parsed, total=total)
            assert ([a.id for a in items], total) == want, query


def test_sqlite_pages_of_many_matches_walk_the_sort_index(engine, monkeypatch):
    """Past ``SORT_DRIVES_AT`` matches, SQLite's page query reads the sort's
    index in order (and stops at the page), not the rows of a filter's index."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    with page_statements(engine) as pages, Session(engine) as session:
        for drives_at, index in ((1, "ix_adapter_updated_at"), (10**6, "")):
            monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", drives_at)
            for args in ({"q": "legal"}, {"method": "lora"}, {"tag": "v1"}):
                pages.clear()
                new.search_adapters(session, clauses=new.search_filters(principal=None, **args), per_page=3)
                plan = " ".join(str(row[3]) for row in session.connection().exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + pages[0][0], pages[0][1]))
                assert ("SCAN adapter USING INDEX ix_adapter_updated_at" in plan) == bool(index), (args, plan)


@contextmanager
def page_statements(engine):
    """The page queries (``SELECT adapter.id, ...``) ``engine`` runs inside the block, with their parameters."""
    from sqlalchemy import event

    pages: list[tuple[str, object]] = []
    listener = lambda conn, cur, stmt, params, *a: stmt.startswith("SELECT adapter.id") and pages.append((stmt, params))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield pages
    finally:
        event.remove(engine, "before_cursor_execute", listener)


@pytest.mark.parametrize("facet,prefix", [("owner", ""), ("owner", "a"), ("owner", "B"), ("base_model", "qwen"),
                                          ("base_model", "META-llama/"), ("base_model", "%"), ("owner", "_")])
def test_type_ahead_values_are_the_facet_values_with_that_prefix(engine, facet, prefix):
    with Session(engine) as session:
        for who in principals():
            clauses = new.search_filters(principal=who)
            want = [(v, c) for v, c in old_facets(session, clauses=old_filters(principal=who))[facet]
                    if v.lower().startswith(prefix.lower())][:3]
            assert facets_mod.facet_values(session, clauses=clauses, facet=facet, prefix=prefix, limit=3) == want


def test_sqlite_full_text_index_follows_every_write(tmp_path):
    """Migration 0006's triggers: after ORM inserts, renames, deletes and Core
    updates, ``q=`` through the index finds what the LIKE scan finds, and
    FTS5's own check finds the index equal to the table."""
    from sqlalchemy import delete, text, update

    from peft_hub.hub.models import Revision

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(engine)
    seed(engine)  # before any change: the backfill and the insert trigger
    with Session(engine) as session:
        session.add(Adapter(id=500, owner="alice", name="Fresh-Legal", name_key="alice/fresh-legal", method="LORA",
                            description="brand new"))
        moved = session.get(Adapter, 7)
        moved.name, moved.description, moved.base_model = "renamed-qwen", "now LEGAL", None
        for table in (Tag, Revision):
            session.exec(delete(table).where(col(table.adapter_id).in_([8, 9])))
        session.delete(session.get(Adapter, 8))
        session.commit()
    with engine.begin() as conn:
        conn.execute(update(Adapter).where(col(Adapter.id) % 5 == 0).values(description="code zz-none", downloads=1))
        conn.execute(update(Adapter).where(col(Adapter.id) % 7 == 0).values(downloads=99))  # no indexed field
        conn.execute(delete(Adapter).where(col(Adapter.id) == 9))
        conn.exec_driver_sql("INSERT INTO adapter_fts(adapter_fts, rank) VALUES ('integrity-check', 1)")
        assert "adapter_fts" in conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'adapter_fts'")).scalar()
    with Session(engine) as session:
        for who, q in itertools.product(principals(), [*QS[1:], "fresh", "renamed-q", "now legal", "zz-none",
                                                           "leg\x00al", "\x00lla"]):
            want = old_search(session, clauses=old_filters(principal=who, q=q), per_page=300)
            items, total, exact = new.search_adapters(session, clauses=new.search_filters(principal=who, q=q),
                                                      per_page=300)
            assert ([a.id for a in items], total) == want and exact, (who, q)
        found = {a.id for a in new.search_adapters(session, clauses=new.search_filters(principal=None, q="legal"),
                                                   per_page=300)[0]}
        assert {500, 7} <= found and 8 not in found
    engine.dispose()


NO_RANK = 2**62
RANKS = [{"min_rank": 16, "max_rank": 64}, {"min_rank": 5, "max_rank": 8}, {"min_rank": 64, "max_rank": 4},
         {"min_rank": 17, "max_rank": 17}, {"max_rank": 4}, {"min_rank": 16}, {"min_rank": 0, "max_rank": 0},
         {"min_rank": -(NO_RANK - 1), "max_rank": NO_RANK - 1}, {"min_rank": NO_RANK - 1, "max_rank": NO_RANK - 1},
         {"min_rank": -NO_RANK, "max_rank": NO_RANK}, {"min_rank": NO_RANK, "max_rank": NO_RANK},
         {"min_rank": 2**31 - 1, "max_rank": 2**31 - 1}, {"min_rank": -(2**31), "max_rank": -(2**31)},
         {"min_rank": 17, "max_rank": 3}, {"min_rank": 16, "max_rank": 3, "kind": "adapter"},
         {"min_rank": 8, "max_rank": 64, "method": "lora"},
         {"min_rank": 16, "max_rank": 64, "q": "legal"}, {"min_rank": 4, "max_rank": 4, "owner": "alice"}]


@pytest.mark.parametrize("drives_at", [search_sql.SORT_DRIVES_AT, 1], ids=["filters-drive", "sort-index-drives"])
def test_rank_sorted_pages_bounded_by_the_summary_are_the_same(engine, monkeypatch, drives_at):
    """A rank-sorted page walks the rank index only between the bounds the
    summary implies (search_sql.rank_bounds): the same rows, at and around
    the NULL ranks' sentinels, with private rows only their owners see."""
    monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", drives_at)
    with Session(engine) as session:
        for who, args, order, page in itertools.product(principals(), RANKS, ("asc", "desc"), (1, 2, 30)):
            if engine.dialect.name == "postgresql" and any(abs(v) > 2**31 for v in args.values() if type(v) is int):
                continue  # past int4: the old query fails there too (the routes cap ranks at 2**31 - 1)
            want = old_search(session, clauses=old_filters(principal=who, **args), sort="rank", order=order,
                              page=page, per_page=5)
            items, total, exact = new.search_adapters(session, clauses=new.search_filters(principal=who, **args),
                                                      sort="rank", order=order, page=page, per_page=5)
            assert ([a.id for a in items], total) == want and exact, (who, args, order, page)
        for who, want_ids in zip(principals(), ([], [241], [242, 241]), strict=True):  # private rows below rank 4
            items = new.search_adapters(session, clauses=new.search_filters(principal=who, min_rank=16, max_rank=3),
                                        sort="rank", order="asc")[0]
            assert [a.id for a in items] == want_ids, who


SHORT_QS = ["a", "A", "ä", "Ä", "%", "_", "e%", "%a", "a_", "_a", "ll", "LL", "7b", "-9", "qw", "ü", "\\", "x\\",
            "de", "ze", "50", "0%", "a\"", "legal", "egal", "zz-none"]
DRIVEN = [{}, {"base_model": "Qwen/Qwen2.5-7B"}, {"base_model": "Qwen/Qwen2.5-7B", "method": "lora"},
          {"method": "IA3"}, {"method": "LORA", "kind": "adapter"}, {"kind": "model"}, {"tag": "v1"},
          {"tag": "v1", "method": "lora"}, {"base_model": "meta-llama/Llama-3.1-8B", "min_rank": 8, "max_rank": 64},
          {"base_model": "none/such"}, {"owner": "bob", "method": "lora"}]


@pytest.mark.parametrize("drive_at", [0, 30, 10**6], ids=["text-index-drives", "by-count", "filters-drive"])
def test_text_queries_driven_by_their_filters_are_the_same(engine, monkeypatch, drive_at):
    """1- and 2-character queries (wildcards, case, non-ASCII, a field's
    first and last characters) and longer ones beside filters whose summary
    count is below or above FILTERS_DRIVE_AT: the same rows, totals, pages."""
    monkeypatch.setattr(search_sql, "FILTERS_DRIVE_AT", drive_at)
    sorts = list(itertools.product(OLD_SORTS, ("asc", "desc")))
    checked = 0
    with Session(engine) as session:
        for who, (i, (q, filters)) in itertools.product(principals(), enumerate(itertools.product(SHORT_QS, DRIVEN))):
            sort, order = sorts[i % len(sorts)]
            for page in (1, 2):
                args = {"q": q, **filters}
                want = _same_page(session, who, args, sort, order, page, per_page=6)
                assert new.count_adapters(session, clauses=new.search_filters(principal=who, **args)) == want[1]
                checked += want[1] > 0
    assert checked > 300


#: SQLite's plan of a page read by the ids its count named (search_sql.IdIn).
BY_IDS = "SEARCH adapter USING INTEGER PRIMARY KEY (rowid=?) LIST SUBQUERY 1 SCAN json_each VIRTUAL TABLE"


def test_sqlite_plans_read_only_what_can_match(engine, monkeypatch):
    """SQLite: a rank-sorted walk has a rank range from the summary; a text
    query beside a base model with few rows reads that model's rows by its
    index, not the text index's candidates."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    from sqlalchemy import event

    pages: list[tuple[str, object]] = []
    listener = lambda conn, cur, stmt, params, *a: " adapter " in stmt and pages.append((stmt, params))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", 1)

    def plans(**args):
        pages.clear()
        new.search_adapters(session, clauses=new.search_filters(principal=None, **args), sort="rank", per_page=3)
        return [" ".join(str(row[3]) for row in session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + s, p))
                for s, p in list(pages)]

    try:
        with Session(engine) as session:
            assert "ix_adapter_rank_id (rank>? AND rank<?)" in plans(min_rank=16, max_rank=64)[-1]
            assert "USING INDEX ix_adapter_rank_id (rank<?)" in plans(max_rank=8)[-1]
            monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", 10**6)
            # The matches are read once (the count, which names them below the bound), the page by their ids.
            count, page = plans(q="legal", base_model="Qwen/Qwen2.5-7B", method="lora")
            assert "adapter_fts" not in count and "ix_adapter_facet_base_model" in count, count
            assert page.startswith(BY_IDS) and "adapter_fts" not in page, page
            monkeypatch.setattr(search_sql, "FILTERS_DRIVE_AT", 0)
            count, page = plans(q="legal", base_model="Qwen/Qwen2.5-7B")
            assert "adapter_fts" in count and page.startswith(BY_IDS), (count, page)
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_postgres_plans_each_search_for_its_values(engine):
    """psycopg prepares a statement run 5 times, and PostgreSQL would then
    settle on one generic plan, made without the LIKE pattern, which reads
    past the trigram indexes (a rare word: 1.4 ms, then 10-18 ms from the 21st
    run). The hub's sessions plan every run for its values: after 30 runs of
    one search on one connection, no generic plan was used."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plan cache")
    from sqlalchemy import text

    with engine.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
        with Session(bind=conn) as session:
            for _ in range(30):
                new.search_adapters(session, clauses=new.search_filters(principal=None, q="legal"), per_page=3)
        prepared = conn.execute(text("SELECT generic_plans, custom_plans FROM pg_prepared_statements")).all()
    assert prepared and sum(c for _, c in prepared) >= 20, prepared  # the searches were prepared, and ran
    assert sum(g for g, _ in prepared) == 0, prepared


def test_a_page_read_by_ids_is_looked_up_by_them_on_postgres(engine):
    """A count that names the matches hands their ids to the page, whose
    other clauses then only test those rows: PostgreSQL must look the rows up
    by id, not plan the page off another index again (the trigram ones: at
    100,000 adapters a rare word's page took 7.7 ms that way, 1.2 ms by id)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plans")
    from sqlalchemy import text

    with page_statements(engine) as pages, engine.connect() as conn, Session(bind=conn) as session:
        conn.execute(text("SET enable_seqscan = off"))  # the tables are small: make the planner pick an index
        found = new.search_adapters(session, clauses=new.search_filters(principal=None, q="legal"), per_page=3)
        assert found.exact and found.total > 3
        (statement, params), = pages
        plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
    # By id (the primary key, or ix_adapter_visible, which starts with it), or the sort's own index walked
    # in order on so small a table; never a filter's index, which would decide the page again.
    used = set(re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\w+)", plan))
    allowed = {"adapter_pkey", "ix_adapter_visible", "ix_adapter_updated_at"}
    assert "= ANY" in statement and used and used <= allowed, plan


def test_a_search_with_no_match_on_its_page_reads_no_page(engine):
    """A count that names every match (none, or fewer than the page's offset) already says the page is
    empty: no page query follows it."""
    with Session(engine) as session:
        for q, page in (("zz-none", 1), ("legal", 50)):
            with page_statements(engine) as pages:
                found = new.search_adapters(session, clauses=new.search_filters(principal=None, q=q), page=page)
            assert pages == [], (q, page)
            want = old_search(session, clauses=old_filters(principal=None, q=q), page=page)
            assert ([a.id for a in found.items], found.total) == want and found.exact and not found.items


def test_sqlite_connections_read_through_a_memory_map_unless_told_not_to(tmp_path):
    from sqlalchemy import text

    from peft_hub.hub import Settings
    from peft_hub.hub.db import engine_from

    for given, want in ((None, 1024**3), (0, 0), (64 * 1024**2, 64 * 1024**2)):
        extra = {} if given is None else {"sqlite_mmap_bytes": given}
        settings = Settings(db_url=f"sqlite:///{tmp_path / f'mm{want}.db'}", storage=str(tmp_path / "b"), **extra)
        engine = engine_from(settings)
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA mmap_size")).scalar() == want
        engine.dispose()


def test_postgres_sessions_price_random_page_reads_as_memory_does_unless_told_not_to(engine):
    """``Settings.pg_random_page_cost``: 1.1 on each session by default, any other value as given, and 0
    leaves the server's own (4 unless its operator changed it)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    from sqlalchemy import text

    from peft_hub.hub import Settings
    from peft_hub.hub.db import engine_from

    with engine.connect() as conn:
        server = conn.execute(text("SELECT reset_val FROM pg_settings WHERE name = 'random_page_cost'")).scalar()
    for given, want in ((None, "1.1"), (2.5, "2.5"), (0, server)):
        extra = {} if given is None else {"pg_random_page_cost": given}
        settings = Settings(db_url=engine.url.render_as_string(hide_password=False), storage="/nonexistent", **extra)
        other = engine_from(settings)
        with other.connect() as conn:
            assert conn.execute(text("SHOW random_page_cost")).scalar() == want, given
        other.dispose()


def test_a_summary_count_by_base_model_reads_that_models_keys(engine):
    """Migration 0014: ``adapter_count``'s key starts with the kind, so without its base-model index a count
    by base model (and no kind) scanned the whole table."""
    from sqlalchemy import event, text

    statements: list[tuple[str, object]] = []
    listener = lambda conn, cur, stmt, params, *a: "FROM adapter_count" in stmt and statements.append((stmt, params))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with engine.connect() as conn, Session(bind=conn) as session:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET enable_seqscan = off"))  # a small table: make the planner pick an index
            new.count_adapters(session, clauses=new.search_filters(principal=None, base_model="Qwen/Qwen2.5-7B"))
            (statement, params), = statements
            explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + statement, params))
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert "ix_adapter_count_base_model" in plan, plan
