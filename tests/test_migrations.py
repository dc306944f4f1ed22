"""Schema upgrades through Alembic, on SQLite and PostgreSQL.

A database made by the in-house runner used before Alembic (restored from
``tests/data/legacy_v5.*.sql``, dumped from commit 2d07adf with rows in every
table) upgrades to head and keeps its rows; older in-house versions and the
known drift come out the same; the models and the revisions agree (``alembic
check``); a fresh database and an upgraded one have the same schema; and
upgrades started at once agree.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from peft_hub.errors import ConflictError
from peft_hub.hub.alembic import config
from peft_hub.hub.db import make_engine
from peft_hub.hub.migrations import check, current, head, upgrade
from peft_hub.hub.models import Namespace

pytestmark = pytest.mark.integration  # SeaweedFS or PostgreSQL

DATA = Path(__file__).parent / "data"
BIG = 6 * 2**30
AT = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    from conftest import _fresh_pg_database

    return _fresh_pg_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def restore_legacy(db_url: str) -> None:
    """Fill the empty database at ``db_url`` with the in-house version-5 dump."""
    if db_url.startswith("sqlite"):
        db = sqlite3.connect(db_url.split("///", 1)[1])
        db.executescript((DATA / "legacy_v5.sqlite.sql").read_text())
        db.close()
        return
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute((DATA / "legacy_v5.postgresql.sql").read_text())


def counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()
                for t in inspect(conn).get_table_names() if t not in ("alembic_version", "peft_hub_schema")}


def schema(engine) -> dict[str, dict]:
    """Everything the inspector sees, table by table."""
    insp = inspect(engine)
    out = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted((f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"],
                           tuple(f["referred_columns"])) for f in insp.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(table)),
            "uniques": sorted((u["name"] or "", tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
        }
    return out


def fresh_schema(tmp_path, backend: str, request) -> dict[str, dict]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        from conftest import _fresh_pg_database

        url = _fresh_pg_database(request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    try:
        upgrade(engine)
        return schema(engine)
    finally:
        engine.dispose()


def test_a_fresh_database_upgrades_to_head_where_models_and_revisions_agree(engine):
    assert current(engine).startswith("empty")
    applied = upgrade(engine)
    assert applied[0].startswith("0001 ") and applied[-1].startswith(head())
    assert current(engine) == f"{head()} (head)"
    assert check(engine) == []
    with engine.begin() as conn:  # alembic check itself, through env.py
        command.check(config(conn))
    assert upgrade(engine) == []


def test_check_names_a_model_change_that_has_no_revision(engine):
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE token ADD COLUMN note VARCHAR(20)"))
    assert check(engine) == ["remove_column token.note"]


def test_an_in_house_v5_database_upgrades_to_head_and_keeps_its_rows(db_url, engine, tmp_path, request):
    restore_legacy(db_url)
    before = counts(engine)
    assert before["revisionfile"] == 2 and "webhook" not in before
    assert current(engine).startswith("in-house version 5")
    applied = upgrade(engine)
    assert applied[0] == "adopted in-house version 5 as 0001" and applied[-1].startswith(head())
    after = counts(engine)
    assert {t: after[t] for t in before} == before
    assert not inspect(engine).has_table("peft_hub_schema")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT size FROM revisionfile WHERE revision_id = 1")).scalar() == BIG
        assert conn.execute(text("SELECT downloads FROM adapter")).scalar() == BIG
        assert conn.execute(text("SELECT name FROM token ORDER BY id")).scalars().all() == ["bootstrap", "ci"]
    assert check(engine) == []
    assert schema(engine) == fresh_schema(tmp_path, request.node.callspec.params["db_url"], request)
    assert upgrade(engine) == []


def _regress_to_v1(engine) -> None:
    """Make the v5 database look as an in-house version 1 of the first release
    left it, and as the runner's drift did (no ``blob.claimed_until`` anywhere
    before aaf58fc; timestamps without time zone from older code)."""
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for table in ("websession", "blobupload", "auditevent", "blob"):
            conn.execute(text(f"DROP TABLE {table}"))
        for column in ("name", "expires_at", "last_used_at"):
            conn.execute(text(f"ALTER TABLE token DROP COLUMN {column}"))
        conn.execute(text("ALTER TABLE revision DROP COLUMN broken"))
        conn.execute(text("DELETE FROM peft_hub_schema WHERE version > 1"))
        if pg:
            conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            conn.execute(text("UPDATE revisionfile SET size = 7"))
            conn.execute(text("UPDATE adapter SET total_size = 7, downloads = 7"))
            for table, column in (("revisionfile", "size"), ("adapter", "total_size"), ("adapter", "downloads")):
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE INTEGER"))
            conn.execute(text("ALTER TABLE namespace ALTER COLUMN created_at TYPE TIMESTAMP"))


def test_older_in_house_versions_and_their_drift_come_out_as_a_fresh_database(db_url, engine, tmp_path, request):
    restore_legacy(db_url)
    _regress_to_v1(engine)
    applied = upgrade(engine)
    assert applied[:5] == [
        "in-house 2 upload receipts, web sessions, audit log, token expiry", "in-house 3 64-bit sizes",
        "in-house 4 blob rows for publish/gc agreement", "in-house 5 revision health marks from fsck",
        "adopted in-house version 1 as 0001",
    ]
    assert check(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM token ORDER BY id")).scalars().all() == ["", ""]
        created = conn.execute(select(Namespace.created_at).where(Namespace.id == 1)).scalar()
    assert created == AT
    got, fresh = schema(engine), fresh_schema(tmp_path, request.node.callspec.params["db_url"], request)
    if engine.dialect.name == "sqlite":  # SQLite's ADD COLUMN ... NOT NULL needs its default, and keeps it
        assert got["token"]["columns"][7] == ("name", "VARCHAR(64)", False, "''")
        got["token"]["columns"][7] = fresh["token"]["columns"][7]
    assert got == fresh


def test_upgrades_started_at_once_agree(db_url):
    restore_legacy(db_url)
    engines = [make_engine(db_url) for _ in range(4)]
    results, errors = [], []
    barrier = threading.Barrier(len(engines))

    def run(engine) -> None:
        barrier.wait()
        try:
            results.append(upgrade(engine))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        assert sorted(len(r) > 0 for r in results) == [False, False, False, True]
        assert current(engines[0]) == f"{head()} (head)" and check(engines[0]) == []
    finally:
        for e in engines:
            e.dispose()


def test_a_database_from_a_newer_release_is_refused(engine):
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConflictError, match="9999, which this peft-hub does not know"):
        upgrade(engine)
