"""Write the dumps of a database made by the in-house schema runner, the one
peft-hub used before Alembic (commit 2d07adf, schema version 5), with a few
rows in every table. ``tests/test_migrations.py`` restores them and upgrades.

They were made with that commit's code first on the path::

    mkdir /tmp/old && git archive 2d07adf peft_hub | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/data/make_legacy_dumps.py

The script is kept to say how; it refuses to run with today's code, whose
schema is not what the dumps are for.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from services import postgres  # noqa: E402

from peft_hub.hub import migrations, models  # noqa: E402
from peft_hub.hub.db import make_engine  # noqa: E402
from peft_hub.hub.migrations import upgrade  # noqa: E402

AT = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
BIG = 6 * 2**30  # past 32 bits: migration 3's BIGINT columns must hold it
ROWS = [
    (models.Namespace, [dict(id=1, name="admin", kind="user", is_admin=True, created_at=AT),
                        dict(id=2, name="alice", kind="user", is_admin=False, created_at=AT),
                        dict(id=3, name="lab", kind="org", is_admin=False, created_at=AT)]),
    (models.Membership, [dict(user_id=2, org_id=3)]),
    (models.Token, [dict(id=1, user_id=1, lookup="phub_adminlook", token_hash="a" * 64, scope="admin",
                         namespaces=None, created_at=AT, name="bootstrap", expires_at=None, last_used_at=AT),
                    dict(id=2, user_id=2, lookup="phub_alicelook", token_hash="b" * 64, scope="write",
                         namespaces=["alice", "lab"], created_at=AT, name="ci", expires_at=AT, last_used_at=None)]),
    (models.Adapter, [dict(id=1, owner="lab", name="tiny-lora", private=True, downloads=BIG, created_at=AT,
                           updated_at=AT, base_model="tiny", method="lora", rank=8, max_rank=8, total_size=BIG,
                           target_modules=["q_proj", "v_proj"], description="a tiny adapter")]),
    (models.Revision, [dict(id=1, adapter_id=1, sha="c" * 40, message="first", author="alice", created_at=AT,
                            meta={"peft_type": "LORA", "r": 8}, broken=None),
                       dict(id=2, adapter_id=1, sha="d" * 40, message="second", author="alice", created_at=AT,
                            meta={}, broken={"checked_at": "2026-12-01T12:00:00+00:00", "files": []})]),
    (models.RevisionFile, [dict(revision_id=1, path="adapter_model.safetensors", sha256="e" * 64, size=BIG),
                           dict(revision_id=2, path="adapter_config.json", sha256="f" * 64, size=120)]),
    (models.Tag, [dict(adapter_id=1, name="main", revision_id=2, updated_at=AT)]),
    (models.Eval, [dict(id=1, revision_id=1, metric="acc", value=0.5, dataset="toy", dataset_version="1",
                        split="test", extra={"n": 3}, added_by="alice", created_at=AT)]),
    (models.LineageEdge, [dict(id=1, child_revision_id=2, position=0, parent_ref="lab/tiny-lora@" + "c" * 40,
                               parent_adapter_id=1, parent_revision="c" * 40, parent_sha256="e" * 64,
                               weight=1.0, method="linear")]),
    (models.BlobUpload, [dict(sha256="e" * 64, user_id=2, size=BIG, created_at=AT)]),
    (models.WebSession, [dict(id_hash="1" * 64, token_id=2, csrf="2" * 64, created_at=AT, expires_at=AT)]),
    (models.AuditEvent, [dict(id=1, at=AT, actor="alice", action="push", target="lab/tiny-lora", client="127.0.0.1",
                              detail={"revision": "d" * 40})]),
    (models.Blob, [dict(sha256="e" * 64, size=BIG, checked_mtime=1.5, corrupt=False, created_at=AT,
                        claimed_until=AT),
                   dict(sha256="f" * 64, size=120, checked_mtime=None, corrupt=True, created_at=AT,
                        claimed_until=None)]),
]


def fill(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        for model, rows in ROWS:
            conn.execute(model.__table__.insert(), rows)
        if conn.dialect.name == "postgresql":  # as if the rows had been inserted one by one
            for model, _ in ROWS:
                if "id" in model.__table__.c and model.__table__.c.id.autoincrement is not False:
                    table = model.__table__.name
                    conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                         f"(SELECT max(id) FROM {table}))")
    engine.dispose()


def main() -> None:
    if [m[0] for m in getattr(migrations, "MIGRATIONS", [])] != [1, 2, 3, 4, 5]:
        raise SystemExit("run this with the in-house schema runner of commit 2d07adf, not today's code")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hub.db"
        fill(f"sqlite:///{path}")
        db = sqlite3.connect(path)
        (HERE / "legacy_v5.sqlite.sql").write_text("\n".join(db.iterdump()) + "\n")
        db.close()
    with postgres() as url:
        fill(url)
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        dump = subprocess.run(["pg_dump", "--no-owner", "--no-privileges", "--inserts", plain],
                              check=True, capture_output=True, text=True).stdout
        # psql meta-commands (pg_dump's \restrict guard): the test runs the dump
        # through the driver, not psql.
        lines = [line for line in dump.splitlines() if not line.startswith("\\")]
        (HERE / "legacy_v5.postgresql.sql").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
