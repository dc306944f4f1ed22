"""The hub's Alembic environment: ``env.py``, the revisions in ``versions/``
and ``script.py.mako``, the template new revisions start from.

It is configured in code (:func:`config`), so a wheel runs its revisions
with no ``alembic.ini``; the ``alembic.ini`` here serves only the ``alembic``
command in a checkout, to write a new revision (README: "Adding a column").
Upgrades go through :mod:`peft_hub.hub.migrations`, which holds the lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import Connection
from sqlmodel import SQLModel

#: The directory Alembic calls ``script_location``.
LOCATION = Path(__file__).parent


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged revisions; ``env.py`` runs
    them on ``connection`` (in its transaction) when one is given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def context_options(dialect: str) -> dict[str, Any]:
    """What ``env.py`` and :func:`peft_hub.hub.migrations.check` compare and
    render with: the models as target, column types compared, and batch
    (copy-and-move) operations for SQLite, whose ALTER TABLE can do little.
    The tables of SQLite's full-text index (revision 0006) and PostgreSQL's
    text body columns and their indexes (0015, 0016) are not models: comparisons skip them."""
    from peft_hub.hub import models  # noqa: F401 - registers the tables

    return {"target_metadata": SQLModel.metadata, "compare_type": True, "render_as_batch": dialect == "sqlite",
            "include_name": _not_full_text}


#: What revision 0006's FTS5 table and its shadow tables (and 0011's body table, until 0015) are called.
FULL_TEXT_PREFIX = "adapter_fts"
#: 0015's and 0016's columns of ``adapter`` and their indexes (PostgreSQL only).
PG_TEXT_BODY = frozenset({"fts_body", "ix_adapter_fts_body_trgm", "fts_squeezed", "ix_adapter_fts_squeezed_trgm"})


def _not_full_text(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return not (name or "").startswith(FULL_TEXT_PREFIX)
    return not (type_ in ("column", "index") and parent_names.get("table_name") == "adapter" and name in PG_TEXT_BODY)
