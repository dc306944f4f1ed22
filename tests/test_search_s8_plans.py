"""Facets read with fewer and cheaper statements give the same counts: a text
query's facets beside filters that match few rows are decided over those
rows on SQLite (as its page is), the plan's count is made once per
transaction, and several facets of one summary table come from one
statement. Checked against the old query logic of tests/test_search_speed.py
on its seeded database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import event
from sqlmodel import Session
from starlette.datastructures import QueryParams
from test_search_speed import FILTERS, QS, old_facets, old_filters, principals
from test_search_speed import engine as engine  # noqa: F401 - its seeded database, the fixture

from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import facet_counts as facets_mod
from peft_hub.hub.crud import search as new
from peft_hub.hub.crud import search_sql
from peft_hub.hub.models import Namespace
from peft_hub.hub.web import catalog


def callers() -> list[Principal | None]:
    """:func:`test_search_speed.principals`, and one limited to namespaces it does not own."""
    limited = Principal(user=Namespace(name="alice"), scope="read", namespaces=["bob", "ACME"], orgs={"acme"})
    return [*principals(), limited]


@pytest.mark.parametrize("drive_at", [0, 10**6], ids=["text-index-drives", "filters-drive"])
def test_text_facets_beside_filters_are_the_same_whichever_drives(engine, monkeypatch, drive_at):
    monkeypatch.setattr(search_sql, "FILTERS_DRIVE_AT", drive_at)
    with Session(engine) as session:
        for who, q, filters in itertools.product(callers(), QS, FILTERS):
            if q is None:
                continue
            args = {"q": q, **filters}
            want = old_facets(session, clauses=old_filters(principal=who, **args))
            clauses = new.search_filters(principal=who, **args)
            assert facets_mod.facets(session, clauses=clauses) == want, args
            assert facets_mod.facets(session, clauses=clauses, one_pass=True) == want, args


def test_several_facets_of_one_summary_are_each_facets_counts(engine):
    """One statement per summary table: the same groups, empty ones and the
    caller's private rows included, as one statement per facet."""
    names = tuple(new.FACET_COLUMNS)
    with Session(engine) as session:
        for who, filters in itertools.product(callers(), [{}, {"kind": "adapter"}, {"method": "lora"},
                                                          {"min_rank": 8, "max_rank": 16}, {"base_model": "x"},
                                                          {"tag": "v1"}, {"tag": "v1", "method": "LORA"}]):
            clauses = new.search_filters(principal=who, **filters)
            want = {n: new.summary_counts(session, clauses, table, n)
                    for n in names if (table := new.summary_source(clauses, n)) is not None}
            assert facets_mod.summary_facets(session, clauses=clauses, names=names) == want, (who, filters)


def test_a_catalog_page_repeats_no_statement(engine, monkeypatch):
    """The page's facets and its rows share one plan count per transaction
    (SQLite's text plan), and the summaries are read once per table."""
    statements: list[tuple[str, object]] = []

    def listener(conn, cursor, statement, parameters, *args):
        statements.append((statement, repr(parameters)))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        for who, query in itertools.product(callers(), [
                "q=legal&base_model=Qwen/Qwen2.5-7B&method=LORA&sort=name&order=asc", "q=a&base_model=Qwen/Qwen2.5-7B",
                "", "method=lora", "min_rank=8&max_rank=16&sort=rank&order=asc", "tag=v1&sort=downloads"]):
            parsed = catalog.CatalogQuery.parse(QueryParams(query))
            with Session(engine) as session:
                statements.clear()
                facets, total = catalog.counts(session, who, parsed)
                items, total = catalog.search(session, who, parsed, total=total)
                assert len(statements) == len(set(statements)), (query, statements)
                expected = {f: old_facets(session, clauses=old_filters(principal=who, **parsed.filters(without=f)))[f]
                            for f in catalog.FACETS}
                assert facets == expected, (who, query)
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_the_plan_count_is_made_again_in_a_new_transaction(engine):
    """The memo is the transaction's: after a commit the count is read again."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's text plan")
    counted: list[str] = []

    def listener(conn, cursor, statement, *args):
        if "adapter_count" in statement:
            counted.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        with Session(engine) as session:
            clauses = new.search_filters(principal=None, q="legal", base_model="Qwen/Qwen2.5-7B")
            first = new.count_adapters(session, clauses=clauses)
            assert new.count_adapters(session, clauses=clauses) == first and len(counted) == 1
            session.commit()
            assert new.count_adapters(session, clauses=clauses) == first and len(counted) == 2
    finally:
        event.remove(engine, "before_cursor_execute", listener)
