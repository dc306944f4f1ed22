"""The search summary tables (migrations 0008, 0009) stay exact, and what
search answers from them is what the rows answer.

Random sequences of writes through the hub's own write paths (publish, create,
visibility, delete, tag, untag) and through raw SQL (Core inserts, updates,
deletes; tags created, deleted, moved to another adapter and renamed), on
SQLite and PostgreSQL: after each, every table equals a live GROUP BY over
``adapter`` (``tag JOIN adapter`` for the tag table), and every count and
facet the summary answers equals the live one for anonymous, partial and
all-seeing principals. Concurrent publishes from two sessions on PostgreSQL
leave them exact; a downgrade past 0008 (or 0009) and an upgrade back, on a
database with rows, backfill them.
"""

from __future__ import annotations

import itertools
import random
import threading
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import delete, func, insert, text, update
from sqlmodel import Session, col, select

from peft_hub.adapter import AdapterMeta
from peft_hub.hub import crud
from peft_hub.hub.alembic import config
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import facet_counts as facets_mod
from peft_hub.hub.crud import search
from peft_hub.hub.migrations import upgrade
from peft_hub.hub.models import NO_RANK, Adapter, Namespace, Revision, Tag, name_key
from peft_hub.model_dir import ModelMeta

OWNERS = ["alice", "Bob", "lab", "Lab2"]
BASES = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", "", None]
METHODS = ["LORA", "lora", "IA3", "LOHA"]
RANKS = [None, 4, 8, 16, 64, -1]
FILTERS = [{}, {"kind": "adapter"}, {"kind": "model"}, {"base_model": "Qwen/Qwen2.5-7B"}, {"method": "lora"},
           {"min_rank": 8}, {"max_rank": 8}, {"min_rank": 4, "max_rank": 16, "method": "LORA"}, {"owner": "LAB"},
           {"owner": "bob", "method": "ia3", "kind": "adapter"}, {"min_rank": -1}, {"max_rank": 0},
           {"tag": "v1"}, {"tag": "V1"}, {"tag": "main", "kind": "adapter"}, {"tag": "v1", "method": "lora"},
           {"tag": "prod", "kind": "model", "method": "IA3"}, {"tag": "absent"}, {"tag": "v1", "owner": "lab"},
           {"tag": "main", "base_model": "Qwen/Qwen2.5-7B"}]
TAGS = ["v1", "V1", "prod", "v1-rc"]  # "main" comes with every publish; tag names are case-exact


@pytest.fixture
def engine(migrated_engine):
    return migrated_engine


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


TAG_KEYS = "t.name, a.kind, a.method, a.private"


def assert_exact(conn) -> None:
    """Every summary table holds exactly a live GROUP BY over ``adapter`` (the
    tag table over ``tag JOIN adapter``), and no zero counts."""
    for table, keys in KEYS.items():
        exprs = ", ".join(keys)
        live = conn.execute(text(f"SELECT {exprs}, count(*) FROM adapter WHERE method IS NOT NULL "
                                 f"GROUP BY {exprs}")).all()
        stored = conn.execute(text(f"SELECT * FROM {table}")).all()
        assert sorted(map(tuple, stored)) == sorted(map(tuple, live)), table
    live = conn.execute(text(f"SELECT {TAG_KEYS}, count(*) FROM tag AS t JOIN adapter AS a ON a.id = t.adapter_id "
                             f"WHERE a.method IS NOT NULL GROUP BY {TAG_KEYS}")).all()
    stored = conn.execute(text("SELECT tag, kind, method, private, n FROM adapter_tag_count")).all()
    assert sorted(map(tuple, stored)) == sorted(map(tuple, live)), "adapter_tag_count"


def assert_answers_agree(session: Session) -> int:
    """Every count and facet the summary answers equals the live one; how many it answered."""
    answered = 0
    for who, filters in itertools.product(principals(), FILTERS):
        clauses = crud.search_filters(principal=who, **filters)
        rows = list(clauses)  # a plain list: the live queries
        live = session.exec(select(func.count()).select_from(Adapter).where(*rows)).one()
        assert search.count_adapters(session, clauses=clauses) == live, (who, filters)
        want = {n: [(v, c) for v, c in g if v] for n, g in facets_mod.facet_groups(session, clauses=rows).items()}
        assert facets_mod.facets(session, clauses=clauses) == want, (who, filters)
        summed = facets_mod.summary_facets(session, clauses=clauses, names=tuple(search.FACET_COLUMNS))
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
    adapters = session.exec(select(Adapter).order_by(Adapter.id)).all()  # in a fixed order: the same walk anywhere
    what = rng.choice(["publish", "publish", "republish", "create", "visibility", "delete", "tag", "tag", "untag"])
    tagged = [a for a in adapters if crud.tags_of(session, adapter=a)]
    if what == "republish" and adapters:
        a = rng.choice(adapters)
        meta = ModelMeta(model_type="llama") if a.kind == "model" else random_meta(rng)
        if isinstance(meta, ModelMeta) != (a.kind == "model") or a.name_key != name_key(a.owner, a.name):
            return  # (a raw owner change leaves name_key behind: publish would not find that repo)
        crud.publish_revision(session, owner=a.owner, name=a.name, entries=[], meta=meta, sha=f"{step:040x}",
                              author="t", private=rng.choice([None, True, False]))
    elif what == "create":
        crud.create_adapter(session, owner=rng.choice(OWNERS), name=f"empty-{step}", private=rng.random() < 0.3)
    elif what == "visibility" and adapters:
        a = rng.choice(adapters)
        crud.set_visibility(session, adapter=a, private=not a.private)
    elif what == "delete" and adapters:
        crud.delete_adapter(session, adapter=rng.choice(adapters))
    elif what == "tag" and tagged:
        a = rng.choice(tagged)
        crud.set_tag(session, adapter=a, tag=rng.choice([*TAGS, "main"]),
                     revision=rng.choice(crud.list_revisions(session, adapter=a)))
    elif what == "untag" and tagged:
        a = rng.choice(tagged)
        names = [t for t in crud.tags_of(session, adapter=a) if t != "main"]
        if names:
            crud.delete_tag(session, adapter=a, tag=rng.choice(names))
    else:
        crud.publish_revision(session, owner=rng.choice(OWNERS), name=f"a-{step}", entries=[],
                              meta=random_meta(rng), sha=f"{step:040x}", author="t", private=rng.random() < 0.3)
    session.commit()


def raw_write(engine, rng: random.Random, step: int) -> None:
    """One change in raw SQL: a bulk insert, an update of one key column on several rows, or a delete."""
    with engine.begin() as conn:
        ids = conn.execute(select(Adapter.id).order_by(Adapter.id)).scalars().all()
        what = rng.choice(["insert", "update", "update", "delete", "tag", "tag", "tag"])
        if what == "tag" and ids:
            raw_tag_write(conn, rng, ids)
            return
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
            for table in (Tag, Revision):
                conn.execute(delete(table).where(col(table.adapter_id).in_(chosen)))
            conn.execute(delete(Adapter).where(where))
            return
        column, values = rng.choice([("private", [True, False]), ("method", [*METHODS, None]),
                                     ("base_model", BASES), ("rank", RANKS), ("max_rank", RANKS),
                                     ("kind", ["adapter", "model"]), ("owner", OWNERS), ("downloads", [5])])
        conn.execute(update(Adapter).where(where).values({column: rng.choice(values)}))


def raw_tag_write(conn, rng: random.Random, ids: list[int]) -> None:
    """Tags in raw SQL: inserted on several adapters, deleted, moved to another adapter, renamed
    (each pointing at a revision of its adapter, as ``crud.delete_adapter`` needs)."""
    tags = conn.execute(select(Tag.adapter_id, Tag.name)).all()
    taken = set(map(tuple, tags))
    what = rng.choice(["insert", "insert", "delete", "move", "rename"])
    newest = select(Revision.adapter_id, func.max(Revision.id)).group_by(Revision.adapter_id)
    revision = dict(conn.execute(newest).all())  # adapter id: one of its revisions
    if what == "insert" or not tags:
        name = rng.choice(TAGS)
        rows = [{"adapter_id": i, "name": name, "revision_id": revision[i], "updated_at": datetime.now(timezone.utc)}
                for i in rng.sample(sorted(revision), min(len(revision), rng.randrange(1, 5)))
                if (i, name) not in taken]
        if rows:
            conn.execute(insert(Tag), rows)
        return
    adapter_id, name = rng.choice(tags)
    row = (col(Tag.adapter_id) == adapter_id) & (col(Tag.name) == name)
    if what == "delete":  # that tag, and the same name on a few other adapters
        others = col(Tag.adapter_id).in_(rng.sample(ids, min(len(ids), 3)))
        conn.execute(delete(Tag).where(row | ((col(Tag.name) == name) & others)))
    elif what == "move":
        free = [i for i in sorted(revision) if (i, name) not in taken]
        if free:
            to = rng.choice(free)
            conn.execute(update(Tag).where(row).values(adapter_id=to, revision_id=revision[to]))
    else:
        new = rng.choice([t for t in TAGS if (adapter_id, t) not in taken] or [name])
        conn.execute(update(Tag).where(row).values(name=new))


def test_random_writes_keep_the_summary_exact_and_its_answers_live(engine):
    rng = random.Random(11)
    answered = tags = 0
    with Session(engine) as session:
        for step in range(90):
            if step % 3 == 2:
                raw_write(engine, rng, step)
            else:
                hub_write(session, rng, step)
            with engine.connect() as conn:
                assert_exact(conn)
            if step % 7 == 6:
                session.expire_all()
                answered += assert_answers_agree(session)
            tags = max(tags, session.exec(select(func.count()).select_from(Tag).where(Tag.name != "main")).one())
        assert session.exec(select(func.count()).select_from(Adapter)).one() > 12
        assert tags > 5, tags  # tags other than main were there to count
    assert answered > 300  # the summary answered most questions: the comparison is not of fallbacks


def test_summary_counts_match_live_over_every_principal(engine):
    """The visibility matrix of tests/test_hub_contract.py (49 callers, public
    and private adapters of three owners), each counted both ways."""
    from peft_hub.hub.auth import can_read

    with Session(engine) as session:
        for i, (owner, private) in enumerate(itertools.product(["alice", "Bob", "lab"], (False, True))):
            meta = AdapterMeta(base_model=BASES[i % 2], method=METHODS[i % 3], task_type=None, rank=8, alpha=None)
            crud.publish_revision(session, owner=owner, name=f"x-{i}", entries=[], meta=meta, sha=f"{i:040x}",
                                  author="t", private=private)
        for a in session.exec(select(Adapter)).all()[::2]:
            crud.set_tag(session, adapter=a, tag="v1", revision=crud.list_revisions(session, adapter=a)[0])
        session.commit()
        adapters = session.exec(select(Adapter)).all()
        tagged = {a.id for a in adapters if "v1" in crud.tags_of(session, adapter=a)}
        assert 0 < len(tagged) < len(adapters)
        callers: list[Principal | None] = [None]
        for is_admin, scope, orgs, limits in itertools.product(
            (False, True), ("read", "write", "admin"), (set(), {"Lab"}), (None, [], ["bob"], ["ALICE", "lab"])
        ):
            callers.append(Principal(user=Namespace(name="alice", is_admin=is_admin), scope=scope,
                                     namespaces=limits, orgs=orgs))
        every = [{}, {"method": "lora"}, {"owner": "lab"}, {"tag": "v1"}, {"tag": "v1", "method": "lora"}]
        for caller, filters in itertools.product(callers, every):
            clauses = crud.search_filters(principal=caller, **filters)
            readable = sum(1 for a in adapters if can_read(caller, a)
                           and a.owner.lower() == filters.get("owner", a.owner.lower())
                           and a.method.upper() == filters.get("method", a.method).upper()
                           and ("tag" not in filters or a.id in tagged))
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
        for filters in ({"q": "x"}, {"target_module": "q_proj"}, {"owner": "a", "base_model": "b"},
                        {"min_rank": NO_RANK}, {"max_rank": -NO_RANK}, {"tag": "v1", "owner": "a"},
                        {"tag": "v1", "base_model": "b"}, {"tag": "v1", "min_rank": 4}, {"tag": "v1", "q": "x"}):
            assert search.summary_source(crud.search_filters(principal=None, **filters)) is None, filters
        assert search.summary_source(crud.search_filters(principal=None, owner="a"), "base_model") is None
        tagged = crud.search_filters(principal=None, tag="v1", kind="adapter", method="lora")
        assert search.summary_source(tagged) is search.AdapterTagCount
        assert [search.summary_source(tagged, f) for f in ("kind", "method", "owner", "base_model")] == [
            search.AdapterTagCount, search.AdapterTagCount, search.AdapterTagFacetCount, search.AdapterTagFacetCount]
        # Without a tag filter the tag table is never the source (it counts tags, not adapters).
        assert search.summary_source(crud.search_filters(principal=None, kind="model"), "kind") is search.AdapterCount


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


def write_adapters_and_tags(engine, rng: random.Random) -> None:
    """Raw writes, published revisions (some private) and raw tag writes: a database to migrate down and up."""
    for step in range(10):
        raw_write(engine, rng, step)
    with Session(engine) as session:
        for step in range(10, 18):
            crud.publish_revision(session, owner=rng.choice(OWNERS), name=f"a-{step}", entries=[],
                                  meta=random_meta(rng), sha=f"{step:040x}", author="t", private=step % 3 == 0)
            session.commit()
    for _ in range(6):
        with engine.begin() as conn:
            raw_tag_write(conn, rng, conn.execute(select(Adapter.id)).scalars().all())


def test_tag_migration_down_and_up_on_a_database_with_tags(engine):
    write_adapters_and_tags(engine, random.Random(5))
    with engine.begin() as conn:
        command.downgrade(config(conn), "0008")
    from sqlalchemy import inspect

    assert not inspect(engine).has_table("adapter_tag_count") and inspect(engine).has_table("adapter_count")
    with engine.begin() as conn:  # no tag triggers now: the backfill must see these
        conn.execute(update(Tag).where(col(Tag.name) == "main").values(name="release"))
        conn.execute(update(Adapter).values(method="LORA"))
    upgrade(engine)
    with engine.connect() as conn:
        assert_exact(conn)
        assert conn.execute(text("SELECT sum(n) FROM adapter_tag_count WHERE tag = 'release'")).scalar() > 0


def test_tags_stay_counted_by_the_join_when_sqlite_does_not_enforce_foreign_keys(engine):
    """A shell without ``PRAGMA foreign_keys``: an adapter deleted under its
    tags, and an adapter inserted under orphan tags, keep the join's count."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL always enforces foreign keys")
    rng = random.Random(11)
    with Session(engine) as session:
        for step in range(6):
            crud.publish_revision(session, owner="alice", name=f"a-{step}", entries=[], meta=random_meta(rng),
                                  sha=f"{step:040x}", author="t", private=step % 2 == 0)
            session.commit()
        a = session.exec(select(Adapter).where(col(Adapter.method).is_not(None))).first()
        crud.set_tag(session, adapter=a, tag="v1", revision=crud.list_revisions(session, adapter=a)[0])
        session.commit()
        gone = {c: getattr(a, c) for c in Adapter.model_fields if c not in ("target_modules",)}
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.execute(delete(Adapter).where(col(Adapter.id) == gone["id"]))
    with engine.connect() as conn:
        assert_exact(conn)
        assert conn.execute(text("SELECT count(*) FROM tag WHERE adapter_id = :i"), {"i": gone["id"]}).scalar() == 2
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.execute(insert(Adapter), [{**gone, "target_modules": []}])  # the same id, under its orphan tags
        assert conn.execute(text("SELECT sum(n) FROM adapter_tag_count WHERE tag = 'v1'")).scalar() == 1
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.execute(update(Adapter).where(col(Adapter.id) == gone["id"]).values(id=10_000))  # tags left behind
    with engine.connect() as conn:
        assert_exact(conn)


def test_a_truncate_empties_the_summaries(engine):
    """``TRUNCATE`` fires no row trigger: the statement triggers of 0012 empty
    what the truncated table fed, so counts start again from nothing (PostgreSQL;
    SQLite has no TRUNCATE, and its DELETE fires the row triggers)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's")
    rng = random.Random(12)
    for step in range(10):
        with Session(engine) as session:
            hub_write(session, rng, step)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM adapter_tag_count")).scalar()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tag"))
    with engine.connect() as conn:
        assert_exact(conn)
        assert conn.execute(text("SELECT count(*) FROM adapter_count")).scalar()  # adapters are still counted
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE adapter RESTART IDENTITY CASCADE"))
    with engine.connect() as conn:
        assert_exact(conn)
    for step in range(10, 16):  # the same ids again, counted from nothing
        with Session(engine) as session:
            hub_write(session, rng, step)
        with engine.connect() as conn:
            assert_exact(conn)
