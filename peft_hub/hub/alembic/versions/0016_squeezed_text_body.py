"""PostgreSQL's text body once more with its ASCII punctuation and spaces taken out, and a trigram index on it.

``adapter.fts_squeezed`` is 0015's body (each searched field's ``lower()``
joined by ``chr(31)``) with every ASCII character that is not a letter or a
digit deleted (:data:`SQUEEZED_OUT`): ``poetry-finance-7`` is
``poetryfinance7``. A trigram index sees no further than a word: for
``q=poetry-fin`` it finds every row that holds ``poetry`` and a word that
begins with ``fin`` anywhere, and the heap decides. Deleting characters
keeps every substring a substring (a field that holds ``q`` squeezed holds
``q`` squeezed), so ``fts_squeezed LIKE '%poetryfin%'`` narrows to the
rows where the two words meet, by trigrams such as ``ryf`` that no other
row holds; the body decides (``crud.search_sql.body_test``). At 100,000
adapters the bounded count of ``poetry-fin`` read 1,516 candidates for 277
matches; it reads 303.

Only a literal query with such a character, and at least three letters or
digits once squeezed, reads it. Adding the column rewrites ``adapter``
under an exclusive lock (100,000 adapters: about 6 s here; the index adds
15 MB to the table's 30). Like 0015's, the column and its index are no
model (``peft_hub.hub.alembic.PG_TEXT_BODY``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-22
"""

from __future__ import annotations

import importlib
from typing import Any

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

COLUMN = "fts_squeezed"
INDEX = "ix_adapter_fts_squeezed_trgm"
#: The characters deleted: every ASCII one but the letters and digits (NUL, which no text holds, aside).
#: One regular expression, read alike by PostgreSQL's ``regexp_replace`` and Python's ``re``.
SQUEEZED_OUT = r"[\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]"


def _body() -> Any:
    return importlib.import_module("peft_hub.hub.alembic.versions.0015_text_body_column").body()


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    squeezed = f"regexp_replace({_body()}, '{SQUEEZED_OUT}+', '', 'g')"  # a generated column cannot read 0015's
    op.execute(f"ALTER TABLE adapter ADD COLUMN {COLUMN} text GENERATED ALWAYS AS ({squeezed}) STORED")
    op.execute(f"CREATE INDEX {INDEX} ON adapter USING gin ({COLUMN} gin_trgm_ops)")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="adapter")
    op.drop_column("adapter", COLUMN)
