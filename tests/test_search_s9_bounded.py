"""A count only the rows can give stops past a bound (crud.search.COUNT_BOUND):
the rows stay the same, ``total`` is exact below the bound and a lower bound
at it, a full page always knows whether another follows, and the catalog
page, which counts its facets over the same rows anyway, stays exact.
Checked against the old query logic of tests/test_search_speed.py, and
through the API, the HF listing and the CLI on a hub with more matches than
the bound.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, event, insert
from sqlmodel import Session
from test_search_speed import FILTERS, QS, old_filters, old_search, principals
from test_search_speed import engine as engine  # noqa: F401 - its seeded database, the fixture

from peft_hub.hub.crud import search as new
from peft_hub.hub.crud import search_sql
from peft_hub.hub.models import Adapter, Namespace, Revision, Tag
from peft_hub.repo_kinds import AdapterMeta


@pytest.mark.parametrize("drives_at", [1, 6], ids=["sort-index-drives", "either-drives"])
def test_bounded_totals_are_exact_below_the_bound_and_a_lower_bound_at_it(engine, monkeypatch, drives_at):
    """On SQLite the bound is at least ``SORT_DRIVES_AT`` (the plan needs to
    know): 6 lets queries with few matches keep the text index's candidates."""
    monkeypatch.setattr(search_sql, "SORT_DRIVES_AT", drives_at)
    bounded = checked = 0
    with Session(engine) as session:
        for who, (i, (q, filters)) in itertools.product(principals()[:2], enumerate(itertools.product(QS, FILTERS))):
            args = {"q": q, **filters}
            for bound, page, per_page in ((1, 1, 3), (5, 1 + i % 3, 2), (40, 2, 7)):
                want_ids, want_total = old_search(session, clauses=old_filters(principal=who, **args),
                                                  page=page, per_page=per_page)
                items, total, exact = new.search_adapters(session, clauses=new.search_filters(principal=who, **args),
                                                          page=page, per_page=per_page, bound=bound)
                offset = (page - 1) * per_page
                at_most = offset + max(bound, drives_at, per_page + 1)
                assert [a.id for a in items] == want_ids, (who, args, bound, page)
                if exact:
                    assert total == want_total, (who, args, bound, page)
                else:  # counted from the rows, and stopped: at the bound, never past the truth
                    assert total == at_most <= want_total and new.summary_source(
                        new.search_filters(principal=who, **args)) is None, (who, args, bound, page)
                    bounded += 1
                assert exact or want_total >= at_most
                # whether another page follows, which the HF listing's Link header is built from
                assert (total > offset + per_page) == (want_total > offset + per_page), (who, args, bound, page)
                checked += want_total > 0
    assert bounded > 50 and checked > 100  # both kinds of answer were compared


def test_a_bounded_text_count_reads_the_text_index_as_it_goes_on_sqlite(engine):
    """The FTS5 table drives the join (matches one at a time, stopping at the
    bound), rather than ``IN (...)``, which gathers every match first."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan")
    clauses = new.search_filters(principal=None, q="legal")
    statement = search_sql.bounded_count(list(clauses), at_most=10, dialect="sqlite")
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
    scans = [p for p in plan if p.startswith(("SCAN", "SEARCH"))]
    assert scans[0].startswith("SCAN adapter_fts VIRTUAL TABLE"), plan
    assert scans[1].startswith("SEARCH adapter USING INTEGER PRIMARY KEY"), plan
    assert "LIST SUBQUERY" not in " ".join(plan), plan


N_BULK = 1100  # more matches than COUNT_BOUND


def _bulk_rows(db_url: str) -> None:
    """``N_BULK`` public adapters named ``legal-…``, each with a ``main``
    revision, written as a bulk import would (Core inserts; the triggers keep
    the text index and the summaries)."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    meta = AdapterMeta(base_model="org/base", method="LORA", task_type=None, rank=8, alpha=16).to_dict()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(Namespace), [{"name": "bulk", "name_key": "bulk", "kind": "user", "created_at": t0}])
        conn.execute(insert(Adapter), [{
            "id": i + 1, "owner": "bulk", "name": f"legal-{i}", "name_key": f"bulk/legal-{i}", "private": False,
            "kind": "adapter",
            "downloads": i % 7, "created_at": t0, "updated_at": t0 + timedelta(minutes=i),
            "base_model": "org/base", "method": "LORA", "rank": 8, "max_rank": 8, "total_size": 1,
            "target_modules": ["q_proj"], "description": "bulk"} for i in range(N_BULK)])
        conn.execute(insert(Revision), [{"id": i, "adapter_id": i, "sha": f"{i:040x}", "message": "", "author": "bulk",
                                         "created_at": t0, "meta": meta} for i in range(1, N_BULK + 1)])
        conn.execute(insert(Tag), [{"adapter_id": i, "name": "main", "revision_id": i, "updated_at": t0}
                                   for i in range(1, N_BULK + 1)])
    engine.dispose()


def test_the_api_the_hf_listing_and_the_cli_say_at_least_past_the_bound(embedded_hub, client_env):
    from peft_hub.cli import cli

    _bulk_rows(embedded_hub.settings.db_url)
    statements: list[str] = []
    event.listen(embedded_hub.app.state.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: statements.append(stmt))
    client = httpx.Client(base_url=embedded_hub.url, timeout=30)
    page = client.get("/api/adapters", params={"q": "legal"}).json()
    assert (page["total"], page["total_exact"], len(page["items"])) == (new.COUNT_BOUND, False, 20)
    assert [s for s in statements if "count(" in s.lower() and "LIMIT" in s], statements
    # a summary-table count stays exact, however large
    page = client.get("/api/adapters", params={"method": "lora"}).json()
    assert (page["total"], page["total_exact"]) == (N_BULK, True)
    # a page near the end still knows what follows it, and its own count is exact past the bound
    last = client.get("/api/adapters", params={"q": "legal", "page": 55}).json()
    assert (last["total"], last["total_exact"], len(last["items"])) == (N_BULK, True, 20)
    assert client.get("/api/adapters", params={"q": "legal", "page": 56}).json()["items"] == []
    # the HF listing pages by its Link header (as huggingface_hub follows it): every row, each once
    seen, url = [], f"{embedded_hub.url}/api/models?search=legal&limit=100000"
    while url:
        listing = client.get(url)
        seen += [m["id"] for m in listing.json()]
        url = listing.links.get("next", {}).get("url")
    assert len(seen) == len(set(seen)) == N_BULK
    # the catalog page, which counts its facets over the same rows, says exactly how many
    assert f"{N_BULK} adapters match" in client.get("/", params={"q": "legal"}).text
    result = CliRunner().invoke(cli, ["--url", embedded_hub.url, "search", "legal"])
    assert result.exit_code == 0 and f"{new.COUNT_BOUND}+ adapter(s), page 1" in result.output, result.output
