"""The search summary tables (migration 0008) stay exact, and what search
answers from them is what the rows answer.

Random sequences of writes through the hub's own write paths (publish, create,
visibility, delete) and through raw SQL (Core inserts, updates, deletes),
on SQLite and PostgreSQL: after each, both tables equal a live GROUP BY over
``adapter``, and every count and facet the summary answers equals the live
one for anonymous, partial and all-seeing principals. Concurrent publishes
from two sessions on PostgreSQL leave them exact; a downgrade past 0008 and
an upgrade back, on a database with rows, backfill them.
"""

from __future__ import annotations

import itertools
import random
import threading

import pytest
from alembic import command
from sqlalchemy import delete, func, insert, text, update
from sqlmodel import Session, col, select

from peft_hub.adapter import AdapterMeta
from peft_hub.hub import crud
from peft_hub.hub.alembic import config
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import search
from peft_hub.hub.db import make_engine
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import NO_RANK, Adapter, Namespace, name_key
from peft_hub.model_dir import ModelMeta

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
OWNERS = ["alice", "Bob", "lab", "Lab2"]
BASES = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "", None]
METHODS = ["LORA", "lora", "IA3", "LOHA"]
RANKS = [None, 4, 8, 16, 64, -1]
FILTERS = [{}, {"kind": "adapter"}, {"kind": "model"}, {"base_model": "Qwen/Qwen2.5-7B"}, {"method": "lora"},
           {"min_rank": 8}, {"max_rank": 8}, {"min_rank": 4, "max_rank": 16, "method": "LORA"}, {"owner": "LAB"},
           {"owner": "bob", "method": "ia3", "kind": "adapter"}, {"min_rank": -1}, {"max_rank": 0}]


@pytest.fixture(params=BACKENDS)
def engine(request, tmp_path):
    from conftest import database_url

    engine = make_engine(database_url(request.param, tmp_path, request))
    upgrade(engine)
    yield engine
    engine.dispose()


def principals() -> list[Principal | None]:
    alice = Principal(user=Namespace(name="alice"), scope="read", orgs={"LAB"})
    limited = Principal(user=Namespace(name="alice"), scope="read", namespaces=["bob"], orgs={"lab"})
    admin = Principal(user=Namespace(name="root", is_admin=True), scope="admin")
    return [None, alice, limited, admin]


# --- the live reference ---------------------------------------------------------------------

KEYS = {
    "adapter_count": ("kind", "coalesce(base_model, '')", "method", f"coalesce(rank, {NO_RANK})",
                      f"coalesce(max_rank, -{NO_RANK})", "private"),
    "adapter_owner_count": ("kind", "owner", "method", "private"),
}


def assert_exact(conn) -> None:
    """Both summary tables hold exactly a live GROUP BY over ``adapter``, and no zero counts."""
    for table, keys in KEYS.items():
        exprs = ", ".join(keys)
        live = conn.execute(text(f"SELECT {exprs}, count(*) FROM adapter WHERE method IS NOT NULL "
                                 f"GROUP BY {exprs}")).all()
        stored = conn.execute(text(f"SELECT * FROM {table}")).all()
        assert sorted(map(tuple, stored)) == sorted(map(tuple, live)), table


def assert_answers_agree(session: Session) -> int:
    """Every count and facet the summary answers equals the live one; how many it answered."""
    answered = 0
    for who, filters in itertools.product(principals(), FILTERS):
        clauses = crud.search_filters(principal=who, **filters)
        rows = list(clauses)  # a plain list: the live queries
        live = session.exec(select(func.count()).select_from(Adapter).where(*rows)).one()
        assert search.count_adapters(session, clauses=clauses) == live, (who, filters)
        want = {n: [(v, c) for v, c in g if v] for n, g in search.facet_groups(session, clauses=rows).items()}
        assert search.facets(session, clauses=clauses) == want, (who, filters)
        summed = search.summary_facets(session, clauses=clauses, names=tuple(search.FACET_COLUMNS))
        for name, groups in summed.items():
            assert [(v, c) for v, c in groups if v] == want[name], (who, filters, name)
            assert sum(c for _, c in groups) == live
        answered += len(summed) + (search.summary_source(clauses) is not None)
    return answered


# --- writes ------------------------------------------------------------------------------------


def random_meta(rng: random.Random):
    if rng.random() < 0.15:
        return ModelMeta(model_type="llama")
    rank = rng.choice(RANKS)
    return AdapterMeta(base_model=rng.choice(BASES), method=rng.choice(METHODS), task_type=None, rank=rank,
                       alpha=None, max_rank=rng.choice([rank, None, 128]))


def hub_write(session: Session, rng: random.Random, step: int) -> None:
    """One change through the hub's own write paths."""
    adapters = session.exec(select(Adapter)).all()
    what = rng.choice(["publish", "publish", "republish", "create", "visibility", "delete"])
    if what == "republish" and adapters:
        a = rng.choice(adapters)
        meta = ModelMeta(model_type="llama") if a.kind == "model" else random_meta(rng)
        if isinstance(meta, ModelMeta) != (a.kind == "model"):
            return
        crud.publish_revision(session, owner=a.owner, name=a.name, entries=[], meta=meta, sha=f"{step:040x}",
                              author="t", private=rng.choice([None, True, False]))
    elif what == "create":
        crud.create_adapter(session, owner=rng.choice(OWNERS), name=f"empty-{step}", private=rng.random() < 0.3)
    elif what == "visibility" and adapters:
        a = rng.choice(adapters)
        crud.set_visibility(session, adapter=a, private=not a.private)
    elif what == "delete" and adapters:
        crud.delete_adapter(session, adapter=rng.choice(adapters))
    else:
        crud.publish_revision(session, owner=rng.choice(OWNERS), name=f"a-{step}", entries=[],
                              meta=random_meta(rng), sha=f"{step:040x}", author="t", private=rng.random() < 0.3)
    session.commit()


def raw_write(engine, rng: random.Random, step: int) -> None:
    """One change in raw SQL: a bulk insert, an update of one key column on several rows, or a delete."""
    with engine.begin() as conn:
        ids = conn.execute(select(Adapter.id)).scalars().all()
        what = rng.choice(["insert", "update", "update", "delete"])
        if what == "insert" or not ids:
            rows = []
            for i in range(rng.randrange(1, 4)):
                owner, name = rng.choice(OWNERS), f"raw-{step}-{i}"
                rows.append({"owner": owner, "name": name, "name_key": name_key(owner, name),
                             "private": rng.random() < 0.3, "kind": rng.choice(["adapter", "model"]),
                             "base_model": rng.choice(BASES), "method": rng.choice([*METHODS, None]),
                             "rank": rng.choice(RANKS), "max_rank": rng.choice(RANKS), "description": "",
                             "total_size": 0, "target_modules": [], "downloads": 0})
            conn.execute(insert(Adapter), rows)
            return
        chosen = rng.sample(ids, min(len(ids), rng.randrange(1, 4)))
        where = col(Adapter.id).in_(chosen)
        if what == "delete":
            from peft_hub.hub.models import Revision, Tag

            for table in (Tag, Revision):
                conn.execute(delete(table).where(col(table.adapter_id).in_(chosen)))
            conn.execute(delete(Adapter).where(where))
            return
        column, values = rng.choice([("private", [True, False]), ("method", [*METHODS, None]),
                                     ("base_model", BASES), ("rank", RANKS), ("max_rank", RANKS),
                                     ("kind", ["adapter", "model"]), ("owner", OWNERS), ("downloads", [5])])
        conn.execute(update(Adapter).where(where).values({column: rng.choice(values)}))


def test_random_writes_keep_the_summary_exact_and_its_answers_live(engine):
    rng = random.Random(8)
    answered = 0
    with Session(engine) as session:
        for step in range(70):
            if step % 3 == 2:
                raw_write(engine, rng, step)
            else:
                hub_write(session, rng, step)
            with engine.connect() as conn:
                assert_exact(conn)
            if step % 7 == 6:
                session.expire_all()
                answered += assert_answers_agree(session)
        assert session.exec(select(func.count()).select_from(Adapter)).one() > 12
    assert answered > 200  # the summary answered most questions: the comparison is not of fallbacks


def test_summary_counts_match_live_over_every_principal(engine):
    """The visibility matrix of tests/test_hub_contract.py (49 callers, public
    and private adapters of three owners), each counted both ways."""
    from peft_hub.hub.auth import can_read

    with Session(engine) as session:
        for i, (owner, private) in enumerate(itertools.product(["alice", "Bob", "lab"], (False, True))):
            meta = AdapterMeta(base_model=BASES[i % 2], method=METHODS[i % 3], task_type=None, rank=8, alpha=None)
            crud.publish_revision(session, owner=owner, name=f"x-{i}", entries=[], meta=meta, sha=f"{i:040x}",
                                  author="t", private=private)
        session.commit()
        adapters = session.exec(select(Adapter)).all()
        callers: list[Principal | None] = [None]
        for is_admin, scope, orgs, limits in itertools.product(
            (False, True), ("read", "write", "admin"), (set(), {"Lab"}), (None, [], ["bob"], ["ALICE", "lab"])
        ):
            callers.append(Principal(user=Namespace(name="alice", is_admin=is_admin), scope=scope,
                                     namespaces=limits, orgs=orgs))
        for caller, filters in itertools.product(callers, [{}, {"method": "lora"}, {"owner": "lab"}]):
            clauses = crud.search_filters(principal=caller, **filters)
            readable = sum(1 for a in adapters if can_read(caller, a)
                           and a.owner.lower() == filters.get("owner", a.owner.lower())
                           and a.method.upper() == filters.get("method", a.method).upper())
            assert (search.summary_source(clauses) is None) == ("owner" in filters)  # an owner's rows: by index
            assert search.count_adapters(session, clauses=clauses) == readable, (caller, filters)
            assert search.count_adapters(session, clauses=list(clauses)) == readable, (caller, filters)
        assert len(callers) == 49


def test_changed_filter_lists_and_unanswerable_filters_are_counted_live(engine):
    with Session(engine) as session:
        clauses = crud.search_filters(principal=None)
        assert search.summary_source(clauses) is search.AdapterCount
        assert search.count_adapters(session, clauses=clauses) == 0
        clauses += crud.search_filters(principal=None, tag="v1")  # what hf/listing does
        assert search.summary_source(clauses) is None
        for filters in ({"q": "x"}, {"tag": "v1"}, {"target_module": "q_proj"}, {"owner": "a", "base_model": "b"},
                        {"min_rank": NO_RANK}, {"max_rank": -NO_RANK}):
            assert search.summary_source(crud.search_filters(principal=None, **filters)) is None, filters
        assert search.summary_source(crud.search_filters(principal=None, owner="a"), "base_model") is None


def test_concurrent_publishes_from_two_sessions_stay_exact(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    barrier, errors = threading.Barrier(2), []

    def publish(worker: int) -> None:
        try:
            with Session(engine) as session:
                barrier.wait()
                for i in range(25):
                    meta = AdapterMeta(base_model="b", method="LORA", task_type=None, rank=8, alpha=None)
                    crud.publish_revision(session, owner="alice", name=f"w{worker}-{i}", entries=[], meta=meta,
                                          sha=f"{worker}{i:039x}", author="t", private=i % 5 == 0)
                    session.commit()
                    if i % 4 == 3:  # a delete of one key racing an insert of the same key
                        crud.delete_adapter(session, adapter=crud.find_adapter(session, owner="alice",
                                                                               name=f"w{worker}-{i}"))
                        session.commit()
        except Exception as exc:  # reported below
            errors.append(exc)

    with Session(engine) as session:
        crud.ensure_namespace(session, name="alice")
        session.commit()
    threads = [threading.Thread(target=publish, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with engine.connect() as conn:
        assert_exact(conn)
        assert conn.execute(text("SELECT sum(n) FROM adapter_count")).scalar() == 2 * (25 - 6)


def test_migration_down_and_up_on_a_database_with_rows(engine):
    rng = random.Random(3)
    for step in range(12):
        raw_write(engine, rng, step)
    with engine.begin() as conn:
        command.downgrade(config(conn), "0007")
    from sqlalchemy import inspect

    assert not inspect(engine).has_table("adapter_count")
    with engine.begin() as conn:
        conn.execute(update(Adapter).values(method="LORA", rank=16))  # no triggers now: the backfill must see it
    upgrade(engine)
    with engine.connect() as conn:
        assert_exact(conn)
        assert conn.execute(text("SELECT sum(n) FROM adapter_count")).scalar() == conn.execute(
            text("SELECT count(*) FROM adapter")).scalar()
    raw_write(engine, rng, 99)
    with engine.connect() as conn:
        assert_exact(conn)
