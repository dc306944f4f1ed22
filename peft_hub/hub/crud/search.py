"""Search, facets and the catalog's queries, with the visibility rule they share."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Boolean, ColumnElement, func, literal, or_, true, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select

from peft_hub.errors import InvalidInputError
from peft_hub.hub.auth import Principal
from peft_hub.hub.models import Adapter, Eval, RevisionFile, Tag

SORTS: dict[str, Mapped[Any]] = {
    "updated": col(Adapter.updated_at), "downloads": col(Adapter.downloads), "name": col(Adapter.name),
    "rank": col(Adapter.rank), "size": col(Adapter.total_size),
}


#: What a text query needs for pg_trgm to find trigrams in it: three letters or digits in a row.
TRIGRAM = re.compile(r"[^\W_]{3}")
#: The fields ``q=`` looks in.
TEXT_COLUMNS = (col(Adapter.name), col(Adapter.owner), col(Adapter.base_model), col(Adapter.description))
#: The facets, by name, and the column each counts.
FACET_COLUMNS: dict[str, Mapped[Any]] = {
    "base_model": col(Adapter.base_model), "method": col(Adapter.method), "owner": col(Adapter.owner),
    "kind": col(Adapter.kind),
}


# --- search -----------------------------------------------------------------


class LowerLike(FunctionElement):
    """``lower(column) LIKE pattern`` for a lower-case ``pattern``: what the
    GIN trigram indexes on ``lower(...)`` answer on PostgreSQL (migration 0005).

    On SQLite it compiles to ``column LIKE pattern``, the same test at half
    the cost: SQLite's ``lower()`` folds ASCII letters only, and its LIKE
    ignores the case of ASCII letters only, so both compare the same
    characters the same way (tests/test_search_speed.py checks the results).
    """

    type = Boolean()
    name = "lower_like"
    inherit_cache = True
    _is_implicitly_boolean = True  # a test already: no ``= 1`` after it where booleans are integers


def _like_parts(element: LowerLike, compiler: Any, **kw: Any) -> tuple[str, str, str]:
    column, pattern, *escape = (compiler.process(c, **kw) for c in element.clauses)
    return column, pattern, f" ESCAPE {escape[0]}" if escape else ""


@compiles(LowerLike)
def _like_lower(element: LowerLike, compiler: Any, **kw: Any) -> str:
    column, pattern, escape = _like_parts(element, compiler, **kw)
    return f"(lower({column}) LIKE {pattern}{escape})"


@compiles(LowerLike, "sqlite")
def _like_lower_sqlite(element: LowerLike, compiler: Any, **kw: Any) -> str:
    column, pattern, escape = _like_parts(element, compiler, **kw)
    return f"({column} LIKE {pattern}{escape})"


class LowerLikeScan(LowerLike):
    """:class:`LowerLike` that PostgreSQL answers by reading the rows, not the
    trigram index: for patterns without three letters or digits in a row
    (``TRIGRAM``), a GIN scan reads the whole index and is slower than the table."""

    name = "lower_like_scan"
    inherit_cache = True


@compiles(LowerLikeScan)
def _like_lower_scan(element: LowerLikeScan, compiler: Any, **kw: Any) -> str:
    column, pattern, escape = _like_parts(element, compiler, **kw)
    return f"((lower({column}) || '') LIKE {pattern}{escape})"  # the same value; not the index's expression


@compiles(LowerLikeScan, "sqlite")
def _like_lower_scan_sqlite(element: LowerLikeScan, compiler: Any, **kw: Any) -> str:
    return _like_lower_sqlite(element, compiler, **kw)


#: The runs of a text query that SQLite's trigram index (migration 0006) can look up: three or more
#: characters with no LIKE wildcard among them.
INDEXED_RUN = re.compile(r"[^%_]{3,}")
#: The FTS5 table of migration 0006 (over name, owner, base model and description).
FTS_TABLE = "adapter_fts"


def fts_phrases(pattern: str) -> str | None:
    """An FTS5 query that every row matching ``LIKE pattern`` in one of the
    indexed fields also matches: each wildcard-free run of three or more
    characters as a quoted phrase (FTS5's own syntax never reaches it), all
    required. None when the pattern has no such run."""
    runs = INDEXED_RUN.findall(pattern)
    return " AND ".join('"' + run.replace('"', '""') + '"' for run in runs) or None


class TextLike(FunctionElement):
    """``q=``'s test: ``TextLike(scan, phrases)``, where ``scan`` is the OR of
    the four :class:`LowerLike` tests and ``phrases`` is :func:`fts_phrases`
    of their pattern.

    On SQLite it compiles to ``adapter.id IN (SELECT rowid FROM adapter_fts
    WHERE adapter_fts MATCH phrases) AND scan``. The index finds the rows
    holding every phrase, with the case of every letter folded: a superset
    of what ``scan`` accepts, read from the index alone. ``scan`` then keeps
    exactly the rows it always kept, testing only those candidates.
    Elsewhere (PostgreSQL and its trigram indexes) it is ``scan`` alone.
    """

    type = Boolean()
    name = "text_like"
    inherit_cache = True
    _is_implicitly_boolean = True


@compiles(TextLike)
def _text_like(element: TextLike, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.clauses.clauses[0], **kw)})"


@compiles(TextLike, "sqlite")
def _text_like_sqlite(element: TextLike, compiler: Any, **kw: Any) -> str:
    scan, phrases = (compiler.process(c, **kw) for c in element.clauses.clauses)
    rowid = compiler.process(col(Adapter.id), **kw)
    return f"({rowid} IN (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH {phrases}) AND ({scan}))"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def visible_clause(principal: Principal | None) -> ColumnElement[bool]:
    """``auth.can_read`` in SQL: public adapters, and private ones in the
    namespaces the principal owns (``Principal.owned_namespaces``, the one rule;
    tests/test_hub_contract.py checks both forms agree over every case)."""
    if principal is None:
        return col(Adapter.private) == False  # noqa: E712 - SQL, not Python: SQLAlchemy builds "private = false"
    owned = principal.owned_namespaces()
    if owned is None:
        return true()
    return or_(col(Adapter.private) == False, func.lower(col(Adapter.owner)).in_(sorted(owned)))  # noqa: E712 - SQL


def search_filters(
    *,
    principal: Principal | None,
    q: str | None = None,
    base_model: str | None = None,
    method: str | None = None,
    min_rank: int | None = None,
    max_rank: int | None = None,
    target_module: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    kind: str | None = None,
) -> list[Any]:
    """The WHERE clauses shared by search, facets and the web catalog."""
    clauses: list[Any] = [visible_clause(principal), col(Adapter.method).is_not(None)]
    if q:
        # As it always was: ``%`` and ``_`` in q are wildcards, and a backslash escapes on
        # PostgreSQL (its LIKE's default) but not on SQLite.
        like, test = f"%{q.lower()}%", LowerLike if TRIGRAM.search(q) else LowerLikeScan
        scan = or_(*(test(c, like) for c in TEXT_COLUMNS))
        # ASCII only: the index folds the case of every letter, SQLite's LIKE only of ASCII ones; the scan
        # decides either way, but a non-ASCII query need not depend on how another SQLite build folds.
        # No NUL: SQLite's LIKE stops reading the pattern there, and FTS5's query parser fails on it.
        phrases = fts_phrases(like) if q.isascii() and "\x00" not in q else None
        clauses.append(TextLike(scan, literal(phrases)) if phrases else scan)
    if base_model:
        clauses.append(Adapter.base_model == base_model)
    if method:
        clauses.append(func.upper(Adapter.method) == method.upper())
    # Rank ranges stay off indexes (``+ 0``, the same value): they match most rows, and SQLite, which
    # keeps no statistics, would otherwise read them through the rank index one random lookup at a time.
    if min_rank is not None:
        clauses.append(col(Adapter.max_rank) + 0 >= min_rank)
    if max_rank is not None:
        clauses.append(col(Adapter.rank) + 0 <= max_rank)
    if owner:
        clauses.append(func.lower(Adapter.owner) == owner.lower())
    if kind:
        clauses.append(col(Adapter.kind) == kind.lower())
    if tag:
        clauses.append(col(Adapter.id).in_(select(Tag.adapter_id).where(Tag.name == tag)))
    if target_module:
        # JSON arrays are stored as text on both backends; match the quoted element.
        from sqlalchemy import String, cast

        clauses.append(cast(Adapter.target_modules, String).like(f'%"{target_module}"%'))
    return clauses


def search_adapters(
    session: Session, *, clauses: list[Any], sort: str = "updated", order: str = "desc", page: int = 1,
    per_page: int = 20, total: int | None = None,
) -> tuple[list[Adapter], int]:
    """One page of adapters matching ``clauses``, and the total count.

    The count is a second query only when the page is full (or past the end)
    and the caller does not know it (``total``, counted with the same
    ``clauses`` in the same transaction): a short page already says how many match.
    """
    if sort not in SORTS:
        raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    column = SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), col(Adapter.id).asc()]
    offset = (page - 1) * per_page
    items = list(session.exec(select(Adapter).where(*clauses).order_by(*ordering).offset(offset).limit(per_page)))
    if len(items) < per_page and (items or offset == 0):
        return items, offset + len(items)
    if total is not None:
        return items, total
    return items, session.exec(select(func.count()).select_from(Adapter).where(*clauses)).one()


def facets(
    session: Session, *, clauses: list[Any], names: tuple[str, ...] | None = None, one_pass: bool = False,
) -> dict[str, list[tuple[str, int]]]:
    """Counts per base model, method, owner and kind among matching repos,
    most first, then by value (only the facets in ``names``, when given),
    without the empty values (see :func:`facet_groups`)."""
    grouped = facet_groups(session, clauses=clauses, names=names, one_pass=one_pass)
    return {name: [(v, c) for v, c in rows if v] for name, rows in grouped.items()}


def facet_groups(
    session: Session, *, clauses: list[Any], names: tuple[str, ...] | None = None, one_pass: bool = False,
) -> dict[str, list[tuple[str | None, int]]]:
    """:func:`facets` with every group, empty values included: the counts of
    any one facet add up to the number of matching repos.

    Each facet is one indexed GROUP BY (migration 0005), or, with
    ``one_pass``, all of them come from one statement that reads the
    matching rows once: cheaper when ``clauses`` cannot use an index (a text
    query).
    """
    wanted = [n for n in FACET_COLUMNS if names is None or n in names]
    if not wanted:
        return {}
    if one_pass and len(wanted) > 1:
        matching = select(*(FACET_COLUMNS[n] for n in wanted)).where(*clauses).cte("matching")
        parts = [select(literal(i).label("facet"), matching.c[n].label("value"), func.count().label("n"))
                 .group_by(matching.c[n]) for i, n in enumerate(wanted)]
        both = union_all(*parts).subquery()
        rows = session.exec(select(both.c.facet, both.c.value, both.c.n)
                            .order_by(both.c.facet, both.c.n.desc(), both.c.value)).all()
        grouped: dict[str, list[tuple[str | None, int]]] = {n: [] for n in wanted}
        for i, value, count in rows:
            grouped[wanted[i]].append((value, count))
    else:
        grouped = {}
        for name in wanted:
            column = FACET_COLUMNS[name]
            grouped[name] = list(session.exec(
                select(column, func.count()).where(*clauses).group_by(column).order_by(func.count().desc(), column)
            ).all())
    return grouped


def facet_values(
    session: Session, *, clauses: list[Any], facet: str, prefix: str = "", limit: int = 10
) -> list[tuple[str, int]]:
    """The values of one facet that start with ``prefix`` (any case) among
    matching repos, most used first: what the catalog's type-ahead offers."""
    column = FACET_COLUMNS[facet]
    where = [*clauses, column.is_not(None), column != ""]
    if prefix:
        where.append(LowerLike(column, _escape_like(prefix.lower()) + "%", "\\"))
    return list(session.exec(
        select(column, func.count()).where(*where).group_by(column).order_by(func.count().desc(), column).limit(limit)
    ).all())


def referenced_blobs(session: Session) -> set[str]:
    return set(session.exec(select(RevisionFile.sha256).distinct()).all())


# --- web catalog ------------------------------------------------------------


def main_revision_evals(session: Session, *, adapter_ids: list[int]) -> dict[int, list[Eval]]:
    """The evals of each adapter's ``main`` revision, newest first (for the catalog's headline eval)."""
    if not adapter_ids:
        return {}
    rows = session.exec(
        select(Tag.adapter_id, Eval).join(Eval, col(Eval.revision_id) == Tag.revision_id)
        .where(Tag.name == "main", col(Tag.adapter_id).in_(adapter_ids)).order_by(col(Eval.id).desc())
    ).all()
    out: dict[int, list[Eval]] = {}
    for adapter_id, row in rows:
        out.setdefault(adapter_id, []).append(row)
    return out
