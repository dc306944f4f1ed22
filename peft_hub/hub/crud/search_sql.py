"""The SQL constructs of search's text query and its plans on each backend:
``q=``'s LIKE tests (PostgreSQL's trigram indexes, SQLite's FTS5 table),
and the choices that keep SQLite, which keeps no statistics, on good plans."""

from __future__ import annotations

import importlib
import re
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Integer,
    String,
    and_,
    case,
    column,
    func,
    literal,
    literal_column,
    or_,
    table,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import col, select

from peft_hub.hub.models import NO_RANK, Adapter, AdapterCount

#: What a text query needs for pg_trgm to find trigrams in it: three letters or digits in a row.
TRIGRAM = re.compile(r"[^\W_]{3}")



class LowerLike(FunctionElement):
    """``lower(column) LIKE pattern`` for a lower-case ``pattern``: what the
    GIN trigram indexes on ``lower(...)`` answer on PostgreSQL (migration
    0005; since 0015 the owner's and the base model's, for the type-ahead's
    prefixes, while ``q=`` reads the text body, :func:`body_test`).

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
    Elsewhere it is ``scan`` alone (on PostgreSQL it sits in a
    :class:`TextBody`, which reads the text body instead).
    """

    type = Boolean()
    name = "text_like"
    inherit_cache = True
    _is_implicitly_boolean = True


@compiles(TextLike)
def _wrapped_test(element: FunctionElement, compiler: Any, **kw: Any) -> str:
    """Where a dialect has no plan of its own, the test the element wraps (in
    parentheses: it is an OR of the fields' LIKEs, inside the WHERE's AND)."""
    return f"({compiler.process(element.clauses.clauses[0], **kw)})"


@compiles(TextLike, "sqlite")
def _text_like_sqlite(element: TextLike, compiler: Any, **kw: Any) -> str:
    scan, phrases = (compiler.process(c, **kw) for c in element.clauses.clauses)
    rowid = compiler.process(col(Adapter.id), **kw)
    return f"({rowid} IN (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH {phrases}) AND ({scan}))"


#: PostgreSQL's text body (migration 0015): a generated column of ``adapter`` holding each searched field's
#: ``lower()`` joined by ``chr(31)``, with a trigram index; and what a query must not hold for a LIKE on it to be
#: the old test exactly: a LIKE wildcard (which could reach across the fields), the escape character, the
#: separator, NUL.
BODY_COLUMN = "fts_body"
BODY_UNSAFE = re.compile(r"[%_\\\x1f\x00]")
#: The body without its ASCII punctuation and spaces (migration 0016), and what was deleted from it.
SQUEEZED_COLUMN = "fts_squeezed"
SQUEEZED_OUT = re.compile(importlib.import_module("peft_hub.hub.alembic.versions.0016_squeezed_text_body")
                          .SQUEEZED_OUT)


def body_safe(q: str) -> bool:
    """Whether ``q``'s LIKE on each field is its LIKE on the body of 0015."""
    return BODY_UNSAFE.search(q) is None


def squeezed(q: str) -> str | None:
    """``q`` (folded as the body is) as 0016's column holds text, when reading that column narrows
    better than the body's index: a literal ASCII ``q`` (:func:`body_safe`) that loses a character
    and keeps three letters or digits in a row (:data:`TRIGRAM`). Else None."""
    if not q.isascii() or not body_safe(q):
        return None
    out = SQUEEZED_OUT.sub("", q.lower())
    return out if out != q.lower() and TRIGRAM.search(out) else None


def body_test(patterns: list[Any], *, scan: Any, indexed: bool, exact: bool, squeeze: str | None = None) -> Any:
    """``q=``'s test on PostgreSQL: ``adapter.fts_body LIKE pattern`` for each
    of ``patterns`` (``%`` + q + ``%`` as :func:`crud.search_filters` folds it).

    The body is each field's ``lower()`` joined by ``chr(31)``. With
    ``exact`` (:func:`body_safe`: a literal without the separator) it holds
    a pattern exactly when one field's ``lower()`` does: the old test, on
    one precomputed column instead of four ``lower()`` calls. Otherwise a
    wildcard may match across fields, so the body only narrows (every field
    it holds, it holds) and ``scan``, the per-field test, decides. Without
    ``indexed`` (no three letters or digits in a row, :data:`TRIGRAM`) the
    column is read as ``fts_body || ''``: a GIN trigram scan of such a
    pattern reads the whole index and is slower than the table.

    With ``squeeze`` (:func:`squeezed`, for an exact ``q``), the rows are
    found by 0016's column holding it, where the words on each side of
    ``q``'s punctuation meet, and the body, read off its index, decides:
    a row whose body holds ``q`` holds it squeezed too."""
    if squeeze is not None and exact:
        body = literal_column(f"(adapter.{BODY_COLUMN} || '')", String())
        near = literal_column(f"adapter.{SQUEEZED_COLUMN}", String()).like(f"%{squeeze}%")
        return and_(near, or_(*(body.like(p) for p in patterns)))
    body = literal_column(f"adapter.{BODY_COLUMN}" if indexed else f"(adapter.{BODY_COLUMN} || '')", String())
    on_body = or_(*(body.like(p) for p in patterns))
    return on_body if exact else and_(on_body, scan)


class TextBody(FunctionElement):
    """``q=``'s test, ``TextBody(clause, on_body)``: on PostgreSQL ``on_body``
    (:func:`body_test`), elsewhere ``clause`` (the test as
    :func:`crud.search_filters` builds it for SQLite: a :class:`TextLike`)."""

    type = Boolean()
    name = "text_body"
    inherit_cache = True
    _is_implicitly_boolean = True


compiles(TextBody)(_wrapped_test)


@compiles(TextBody, "postgresql")
def _text_body_postgresql(element: TextBody, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.clauses.clauses[1], **kw)})"


def like_scan(clause: Any) -> Any:
    """A text test as it is read row by row: a :class:`TextLike` its LIKE scan
    alone (SQLite); a :class:`TextBody` keeps PostgreSQL's test on the body."""
    if isinstance(clause, TextBody):
        inner, on_body = clause.clauses.clauses
        return TextBody(like_scan(inner), on_body)
    return clause.clauses.clauses[0] if isinstance(clause, TextLike) else clause


#: On SQLite, a page query whose filters match this many rows (past the offset) walks the sort's index
#: and stops at the page (:func:`sort_drives`). A bounded count (:func:`bounded_count`) counts at least
#: this far past the offset, so that it can tell. Tests lower it.
SORT_DRIVES_AT = 1000


class OffIndex(FunctionElement):
    """A WHERE clause that the database tests on each row it reads and never
    looks up in an index: on SQLite ``+(clause)``, the same truth value
    (``+`` leaves 1, 0 and NULL as they are); on PostgreSQL ``(clause) IS
    TRUE``, which keeps the rows the clause keeps and which no index
    answers (a page read by its ids, :class:`IdIn`, would otherwise be
    planned off a trigram index again). Elsewhere, the clause."""

    type = Boolean()
    name = "off_index"
    inherit_cache = True
    _is_implicitly_boolean = True


@compiles(OffIndex, "sqlite")
def _off_index_sqlite(element: OffIndex, compiler: Any, **kw: Any) -> str:
    return f"+({compiler.process(element.clauses.clauses[0], **kw)})"


@compiles(OffIndex, "postgresql")
def _off_index_postgresql(element: OffIndex, compiler: Any, **kw: Any) -> str:
    return f"(({compiler.process(element.clauses.clauses[0], **kw)}) IS TRUE)"


def sort_drives(clauses: list[Any], *, total: int, offset: int) -> list[Any]:
    """``clauses`` for SQLite's page query, given how many rows they match.

    SQLite keeps no statistics, so it reads the rows of any filter with an
    index (a method, a tag, the text index's candidates) and sorts them all,
    even when they are most of the table. When at least ``SORT_DRIVES_AT``
    rows match past ``offset``, every clause becomes :class:`OffIndex` (a
    :class:`TextLike` its LIKE scan alone, the same test): the only index
    left is the sort's, which SQLite walks in order, stopping at the page.
    """
    if total < SORT_DRIVES_AT + offset:
        return clauses
    return [OffIndex(like_scan(c)) for c in clauses]


#: On SQLite, a text query beside filters that match at most this many rows (as the summary tables count
#: them) is decided by its LIKE over the rows those filters' index finds (:func:`filters_drive`). Tests change it.
FILTERS_DRIVE_AT = 2000
#: The filters whose own index finds their rows, the fewest rows (usually) first: the one that drives.
DRIVERS = ("base_model", "tag", "method", "kind")


def filters_drive(clauses: list[Any], *, keep: tuple[Any, ...], matching: int) -> list[Any]:
    """``clauses`` (a text query's among them) for SQLite when the other
    filters match ``matching`` rows: at most ``FILTERS_DRIVE_AT``, only the
    clauses in ``keep`` (the driver, and the visibility and method tests that
    the driver's covering index holds too) may be looked up in an index;
    every other is :class:`OffIndex` (a :class:`TextLike` its LIKE scan
    alone, the same test). SQLite then reads the driver's few rows and the
    LIKE decides, instead of gathering every candidate of the text index
    first. More, and ``clauses`` as they are."""
    if matching > FILTERS_DRIVE_AT:
        return clauses
    return [c if any(c is k for k in keep) else OffIndex(like_scan(c)) for c in clauses]


class NoIndexSQLite(FunctionElement):
    """A column that SQLite reads off its indexes (``+ 0``, the same value):
    rank ranges match most rows, and SQLite, which keeps no statistics, would
    otherwise read them through the rank index one random lookup at a time.
    PostgreSQL's planner, which knows how many rows match, gets the column."""

    type = Integer()
    name = "no_index_sqlite"
    inherit_cache = True


@compiles(OffIndex)
@compiles(NoIndexSQLite)
def _as_wrapped(element: FunctionElement, compiler: Any, **kw: Any) -> str:
    """Off SQLite, both hints are the expression they wrap (in parentheses: an OR among an AND keeps its sense)."""
    return f"({compiler.process(element.clauses.clauses[0], **kw)})"


@compiles(NoIndexSQLite, "sqlite")
def _no_index_sqlite(element: NoIndexSQLite, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.clauses.clauses[0], **kw)} + 0)"


def rank_bounds(given: dict[str, Any]) -> list[Any]:
    """Clauses on ``adapter.rank`` that every row matching the rank filters
    in ``given`` (``Filters.given``) satisfies, for a page that walks the rank
    index: it starts at the least rank any such row has and stops at
    ``max_rank``, instead of reading every lower rank whose ``max_rank`` can
    never reach ``min_rank``.

    The least rank comes from ``adapter_count`` (every adapter with a method,
    private or not, keyed by its rank and max rank; exact in the reader's own
    transaction): a superset of the matching rows, so the bound never drops
    one. Only with ``max_rank`` given: then no row with a NULL rank matches
    (the summary keys those ``NO_RANK``, past every bound). None past the
    NULL ranks' keys, as for the counts."""
    low, high = given.get("min_rank"), given.get("max_rank")
    if high is None or any(abs(b) >= NO_RANK for b in (low, high) if b is not None):
        return []
    bounds = [col(Adapter.rank) <= high]
    if low is not None:
        least = select(func.min(AdapterCount.rank)).where(col(AdapterCount.max_rank) >= low,
                                                          col(AdapterCount.rank) <= high)
        bounds.append(col(Adapter.rank) >= least.scalar_subquery())
    return bounds


def bounded_count(where: list[Any], *, at_most: int, dialect: str) -> Any:
    """``SELECT count(*)`` of at most ``at_most`` of the rows ``where``
    matches: the statement stops reading once it has found them, so it costs
    what ``at_most`` rows do rather than what every match does.

    On SQLite, a :class:`TextLike` among ``where`` (as :func:`crud.search_filters`
    built it, not planned off its index) drives: the rows come from its FTS5
    table joined to ``adapter`` by rowid, which yields matches one at a time
    (``adapter.id IN (...)`` would gather every match first), and every
    clause, the text's LIKE scan among them, decides off the indexes
    (:class:`OffIndex`), as it does for those candidates today."""
    return select(func.count()).select_from(_bounded(where, literal(1), at_most=at_most, dialect=dialect).subquery())


def bounded_matches(where: list[Any], *, at_most: int, dialect: str, sort: tuple[Any, str] | None = None) -> Any:
    """:func:`bounded_count`'s count, and beside it, when it is below
    ``at_most`` (every match then), the matches' ids as one value (a JSON
    array on SQLite, an array on PostgreSQL; else NULL), aggregated in the
    database: :func:`id_in` takes it back, so the page reads those rows by
    primary key instead of reading the table for them a second time.

    On PostgreSQL, with ``sort`` (a column of ``adapter`` and ``"asc"`` or
    ``"desc"``), the ids come in the page's order, the column then the id
    ascending, read from the rows the count reads anyway: the page then
    looks up its own ids alone (:func:`page_of`). SQLite's aggregates keep
    no order (before 3.44); there the page sorts every match."""
    if dialect == "sqlite" or sort is None:
        rows = _bounded(where, col(Adapter.id).label("id"), at_most=at_most, dialect=dialect).subquery()
        ids = func.json_group_array(rows.c.id) if dialect == "sqlite" else func.array_agg(rows.c.id)
    else:
        column, order = sort
        rows = _bounded(where, col(Adapter.id).label("id"), column.label("sort_key"), at_most=at_most,
                        dialect=dialect).subquery()
        key = rows.c.sort_key.asc() if order == "asc" else rows.c.sort_key.desc()
        ids = func.array_agg(aggregate_order_by(rows.c.id, key, rows.c.id.asc()))
    n = func.count()
    return select(n, case((n < at_most, ids), else_=None)).select_from(rows)


def page_of(ids: Any, *, offset: int, per_page: int, dialect: str) -> tuple[Any, int]:
    """The ids a page reads from :func:`bounded_matches`' ``ids``, and the offset it then reads them at:
    on PostgreSQL (ids in the page's order) its own ids, at 0; on SQLite all of them, at ``offset``."""
    if dialect == "sqlite":
        return ids, offset
    return list(ids)[offset:offset + per_page], 0


def _bounded(where: list[Any], *what: Any, at_most: int, dialect: str) -> Any:
    unwrapped = (c.clauses.clauses[0] if isinstance(c, TextBody) else c for c in where)
    text = next((c for c in unwrapped if isinstance(c, TextLike)), None) if dialect == "sqlite" else None
    if text is None:
        return select(*what).select_from(Adapter).where(*where).limit(at_most)
    fts = table(FTS_TABLE, column("rowid"))
    match = literal_column(FTS_TABLE).op("MATCH")(text.clauses.clauses[1])
    return (select(*what).select_from(fts.join(Adapter, col(Adapter.id) == fts.c.rowid))
            .where(match, *(OffIndex(like_scan(c)) for c in where)).limit(at_most))


class IdIn(FunctionElement):
    """``adapter.id`` among a list of ids, sent as one parameter whatever
    its length: ``IdIn(literal(json_text))`` on SQLite (``adapter.id IN
    (SELECT value FROM json_each(...))``, ids as a JSON array),
    ``IdIn(literal(ids, ARRAY(BigInteger)))`` on PostgreSQL (``adapter.id =
    ANY(...)``); :func:`id_in` builds either from :func:`bounded_matches`' ids. Each looks the rows up by
    primary key; the page then tests its other clauses on those rows alone."""

    type = Boolean()
    name = "id_in"
    inherit_cache = True
    _is_implicitly_boolean = True


@compiles(IdIn)
def _id_in(element: IdIn, compiler: Any, **kw: Any) -> str:
    rowid, ids = compiler.process(col(Adapter.id), **kw), compiler.process(element.clauses.clauses[0], **kw)
    return f"({rowid} = ANY({ids}))"


@compiles(IdIn, "sqlite")
def _id_in_sqlite(element: IdIn, compiler: Any, **kw: Any) -> str:
    rowid, ids = compiler.process(col(Adapter.id), **kw), compiler.process(element.clauses.clauses[0], **kw)
    return f"({rowid} IN (SELECT value FROM json_each({ids})))"


def id_in(ids: Any, *, dialect: str) -> IdIn:
    """:class:`IdIn` of ``ids`` as :func:`bounded_matches` gave them (``dialect`` ``sqlite``: JSON text)."""
    if dialect == "sqlite":
        return IdIn(literal(ids, String()))
    return IdIn(literal(list(ids), ARRAY(BigInteger())))


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
