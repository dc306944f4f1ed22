"""The facet summaries of migration 0013 stay exact, and the base model and
owner facets beside a tag, and the owner facet beside a rank range, that
they answer are what the rows answer.

The random writes of tests/test_search_summary.py (the hub's write paths, raw
SQL on adapters and on tags: inserted, deleted, moved, renamed), on SQLite
and PostgreSQL: after each, ``adapter_tag_facet_count`` equals a live
``GROUP BY`` over ``tag JOIN adapter`` for each facet and
``adapter_owner_rank_count`` one over ``adapter``, and every facet they
answers equals the live one for every kind of caller; a downgrade past 0013
and an upgrade back backfill it; a ``TRUNCATE`` empties it (PostgreSQL); the
catalog's tag page shows the same facets from it as from the rows.
"""

from __future__ import annotations

import itertools
import random

import pytest
from alembic import command
from sqlalchemy import inspect, text, update
from sqlmodel import Session, col, select
from test_search_summary import (
    hub_write,
    principals,
    raw_tag_write,
    raw_write,
    write_adapters_and_tags,
)

from peft_hub.hub import crud
from peft_hub.hub.alembic import config
from peft_hub.hub.crud import facet_counts as facets_mod
from peft_hub.hub.crud import search
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import NO_RANK, Adapter, AdapterOwnerRankCount, AdapterTagFacetCount, Tag
from peft_hub.hub.web import catalog

#: Each facet's value as 0013 keys it.
FACET_KEYS = {"base_model": "coalesce(a.base_model, '')", "owner": "a.owner"}
TAG_FILTERS = [{"tag": "v1"}, {"tag": "V1"}, {"tag": "main"}, {"tag": "main", "kind": "adapter"},
               {"tag": "v1", "method": "lora"}, {"tag": "prod", "kind": "model", "method": "IA3"},
               {"tag": "absent"}, {"tag": "main", "method": "LORA", "kind": "adapter"}]
RANK_FILTERS = [{"min_rank": 8}, {"max_rank": 8}, {"min_rank": 4, "max_rank": 16}, {"min_rank": 16, "max_rank": 64},
                {"min_rank": 0, "max_rank": 0}, {"min_rank": 65, "max_rank": 127}, {"min_rank": -1}, {"max_rank": -1}]
RANK_KEYS = f"private, owner, coalesce(rank, {NO_RANK}), coalesce(max_rank, -{NO_RANK})"


@pytest.fixture
def engine(migrated_engine):
    return migrated_engine


def assert_facets_exact(conn) -> None:
    """``adapter_tag_facet_count`` is a live GROUP BY per facet, with no zero counts."""
    live = []
    for facet, value in FACET_KEYS.items():
        keys = f"t.name, {value}, a.kind, a.method, a.private"
        live += [(r[0], facet, *r[1:]) for r in conn.execute(text(
            f"SELECT {keys}, count(*) FROM tag AS t JOIN adapter AS a ON a.id = t.adapter_id "
            f"WHERE a.method IS NOT NULL GROUP BY {keys}")).all()]
    stored = conn.execute(text("SELECT tag, facet, value, kind, method, private, n FROM adapter_tag_facet_count"))
    assert sorted(map(tuple, stored.all())) == sorted(map(tuple, live))
    live = conn.execute(text(f"SELECT {RANK_KEYS}, count(*) FROM adapter WHERE method IS NOT NULL "
                             f"GROUP BY {RANK_KEYS}")).all()
    stored = conn.execute(text("SELECT private, owner, rank, max_rank, n FROM adapter_owner_rank_count")).all()
    assert sorted(map(tuple, stored)) == sorted(map(tuple, live)), "adapter_owner_rank_count"


def assert_tag_facets_agree(session: Session) -> int:
    """Every base model and owner facet beside a tag equals the live one; how many the summary answered."""
    answered = 0
    for who, filters in itertools.product(principals(), TAG_FILTERS):
        clauses = crud.search_filters(principal=who, **filters)
        rows = list(clauses)  # a plain list: the live queries
        live = facets_mod.facet_groups(session, clauses=rows, names=("base_model", "owner"))
        summed = facets_mod.summary_facets(session, clauses=clauses, names=("base_model", "owner"))
        assert set(summed) == {"base_model", "owner"}, filters
        for name, groups in summed.items():
            assert [(v, c) for v, c in groups if v] == [(v, c) for v, c in live[name] if v], (who, filters, name)
            assert sum(c for _, c in groups) == sum(c for _, c in live[name])
            answered += bool(groups)
        assert facets_mod.facets(session, clauses=clauses) == facets_mod.facets(session, clauses=rows)
    for who, filters in itertools.product(principals(), RANK_FILTERS):
        clauses = crud.search_filters(principal=who, **filters)
        rows = list(clauses)
        live = facets_mod.facet_groups(session, clauses=rows, names=("owner",))["owner"]
        summed = facets_mod.summary_facets(session, clauses=clauses, names=("owner",))
        assert summed == {"owner": live}, (who, filters)  # owners are never empty: every group, in order
        answered += bool(live)
        assert facets_mod.facets(session, clauses=clauses) == facets_mod.facets(session, clauses=rows)
    return answered


def test_random_writes_keep_the_tag_facets_exact_and_their_answers_live(engine):
    rng = random.Random(13)
    answered = 0
    with Session(engine) as session:
        for step in range(90):
            if step % 3 == 2:
                raw_write(engine, rng, step)
            else:
                hub_write(session, rng, step)
            with engine.connect() as conn:
                assert_facets_exact(conn)
            if step % 9 == 8:
                session.expire_all()
                answered += assert_tag_facets_agree(session)
    assert answered > 100


def test_only_a_tag_beside_kind_and_method_reads_the_tag_facets():
    for filters, want in (({"tag": "v1"}, AdapterTagFacetCount), ({"tag": "v1", "kind": "model", "method": "x"},
                          AdapterTagFacetCount), ({"tag": "v1", "owner": "a"}, None), ({"tag": "v1", "min_rank": 4},
                          None), ({"tag": "v1", "q": "x"}, None), ({}, None), ({"method": "x"}, None)):
        clauses = crud.search_filters(principal=None, **filters)
        for facet in ("base_model", "owner"):
            assert (search.summary_source(clauses, facet) is AdapterTagFacetCount) == (want is not None), filters
        assert search.summary_source(clauses) is not AdapterTagFacetCount  # the count: adapter_tag_count
    for filters, ranked in (({"min_rank": 4}, True), ({"min_rank": 4, "max_rank": 8}, True), ({"max_rank": 8}, True),
                            ({}, False), ({"min_rank": 4, "method": "x"}, False), ({"max_rank": 8, "kind": "model"},
                            False), ({"min_rank": NO_RANK}, False), ({"min_rank": 4, "tag": "v1"}, False)):
        clauses = crud.search_filters(principal=None, **filters)
        assert (search.summary_source(clauses, "owner") is AdapterOwnerRankCount) == ranked, filters
        assert search.summary_source(clauses) is not AdapterOwnerRankCount


def test_the_catalog_tag_page_shows_the_facets_of_the_rows(engine):
    rng = random.Random(21)
    with Session(engine) as session:
        for step in range(40):
            hub_write(session, rng, step)
        with engine.begin() as conn:
            for _ in range(8):
                raw_tag_write(conn, rng, conn.execute(select(Adapter.id)).scalars().all())
        session.expire_all()
        for who, filters in itertools.product(principals(), TAG_FILTERS + RANK_FILTERS):
            query = catalog.CatalogQuery(**filters)
            got, total = catalog.counts(session, who, query)
            for name in catalog.FACETS:  # each facet without its own filter, from the rows
                rows = list(crud.search_filters(principal=who, **query.filters(without=name)))
                assert got[name] == facets_mod.facets(session, clauses=rows, names=(name,))[name], (who, filters)
            if total is not None:
                assert total == search.count_adapters(session, clauses=list(crud.search_filters(principal=who,
                                                                                               **filters)))


def test_facet_migration_down_and_up_on_a_database_with_tags(engine):
    rng = random.Random(6)
    write_adapters_and_tags(engine, rng)
    with engine.begin() as conn:
        command.downgrade(config(conn), "0012")
    assert not inspect(engine).has_table("adapter_tag_facet_count") and inspect(engine).has_table("adapter_tag_count")
    assert not inspect(engine).has_table("adapter_owner_rank_count")
    with engine.begin() as conn:  # no 0013 triggers now: the backfill must see these
        conn.execute(update(Tag).where(col(Tag.name) == "main").values(name="release"))
        conn.execute(update(Adapter).values(owner="lab", rank=32))
    upgrade(engine)
    with engine.connect() as conn:
        assert_facets_exact(conn)
        assert conn.execute(text("SELECT sum(n) FROM adapter_tag_facet_count WHERE tag = 'release' "
                                 "AND facet = 'owner' AND value = 'lab'")).scalar() > 0
    with engine.begin() as conn:
        raw_tag_write(conn, rng, conn.execute(select(Adapter.id)).scalars().all())
    with engine.connect() as conn:
        assert_facets_exact(conn)


def test_a_truncate_empties_the_facet_summaries(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's")
    rng = random.Random(14)
    for step in range(10):
        with Session(engine) as session:
            hub_write(session, rng, step)
    for table in ("tag", "adapter RESTART IDENTITY CASCADE"):
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {table}"))
        with engine.connect() as conn:
            assert_facets_exact(conn)
            assert not conn.execute(text("SELECT count(*) FROM adapter_tag_facet_count")).scalar()
        with engine.connect() as conn:  # a TRUNCATE of tag leaves the adapters counted
            ranked = conn.execute(text("SELECT count(*) FROM adapter_owner_rank_count")).scalar()
            assert bool(ranked) == table.startswith("tag")
    for step in range(10, 16):
        with Session(engine) as session:
            hub_write(session, rng, step)
        with engine.connect() as conn:
            assert_facets_exact(conn)
