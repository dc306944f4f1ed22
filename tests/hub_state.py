"""What adversarial tests compare before and after a refused request: every
table's rows and every blob in the store, so "nothing was stored or
half-written" is checked, not assumed."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import MetaData, select

#: Tables whose rows legitimately change on a refused request.
VOLATILE = {"auditevent", "token", "alembic_version"}


def snapshot(hub: Any) -> dict[str, Any]:
    """Every row of every table (but the volatile ones) and every stored blob."""
    engine = hub.app.state.engine
    meta = MetaData()
    meta.reflect(engine)
    rows = {}
    with engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            if name not in VOLATILE:
                rows[name] = sorted(repr(tuple(r)) for r in conn.execute(select(table)))
    blobs = sorted((b.sha256, b.size) for b in hub.app.state.store.iterate())
    return {"rows": rows, "blobs": blobs}


def blob_intact(hub: Any, sha256: str) -> bool:
    """The stored bytes of ``sha256`` still hash to it."""
    digest = hashlib.sha256()
    with hub.app.state.store.open(sha256) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest() == sha256
