"""Search, facets and the catalog's queries, with the visibility rule they share."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, or_, true, union_all
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col, select

from peft_hub.errors import InvalidInputError
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud import search_sql
from peft_hub.hub.crud.search_sql import (  # noqa: F401 - FTS_TABLE, fts_phrases: part of this module's surface
    DRIVERS,
    FTS_TABLE,
    TRIGRAM,
    LowerLike,
    LowerLikeScan,
    NoIndexSQLite,
    OffIndex,
    TextBody,
    TextLike,
    body_safe,
    body_test,
    bounded_count,
    bounded_matches,
    escape_like,
    filters_drive,
    fts_phrases,
    id_in,
    like_scan,
    page_of,
    rank_bounds,
    sort_drives,
    squeezed,
)
from peft_hub.hub.models import (
    NO_RANK,
    Adapter,
    AdapterCount,
    AdapterOwnerCount,
    AdapterOwnerRankCount,
    AdapterTagCount,
    AdapterTagFacetCount,
    Eval,
    RevisionFile,
    Tag,
)

SORTS: dict[str, Mapped[Any]] = {
    "updated": col(Adapter.updated_at), "downloads": col(Adapter.downloads), "name": col(Adapter.name),
    "rank": col(Adapter.rank), "size": col(Adapter.total_size),
}


#: The fields ``q=`` looks in.
TEXT_COLUMNS = (col(Adapter.name), col(Adapter.owner), col(Adapter.base_model), col(Adapter.description))
#: The facets, by name, and the column each counts.
FACET_COLUMNS: dict[str, Mapped[Any]] = {
    "base_model": col(Adapter.base_model), "method": col(Adapter.method), "owner": col(Adapter.owner),
    "kind": col(Adapter.kind),
}


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
    """The WHERE clauses shared by search, facets and the web catalog (a
    :class:`Filters`: counts read the summary tables while it is unchanged)."""
    given = {"q": q, "base_model": base_model, "method": method, "min_rank": min_rank, "max_rank": max_rank,
             "target_module": target_module, "owner": owner, "tag": tag, "kind": kind}
    clauses: list[Any] = [visible_clause(principal), col(Adapter.method).is_not(None)]
    named: dict[str, Any] = {"always": tuple(clauses)}  # and the clause of each filter that can drive a plan (DRIVERS)
    if q:
        # As it always was: ``%`` and ``_`` in q are wildcards, and a backslash escapes on
        # PostgreSQL (its LIKE's default) but not on SQLite.
        like, test = f"%{q.lower()}%", LowerLike if TRIGRAM.search(q) else LowerLikeScan
        scan = or_(*(test(c, like) for c in TEXT_COLUMNS))
        # A non-ASCII q also as the database folds the fields: Python's lower() special-cases some letters
        # (a final sigma, the dotted I), and SQLite's lower() folds ASCII only.
        typed = [] if q.isascii() else [func.lower(f"%{q}%")]
        scan = or_(scan, *(test(c, pattern) for pattern in typed for c in TEXT_COLUMNS)) if typed else scan
        # ASCII only: the index folds the case of every letter, SQLite's LIKE only of ASCII ones; the scan
        # decides either way, but a non-ASCII query need not depend on how another SQLite build folds.
        # No NUL: SQLite's LIKE stops reading the pattern there, and FTS5's query parser fails on it.
        phrases = fts_phrases(like) if q.isascii() and "\x00" not in q else None
        text = TextLike(scan, literal(phrases)) if phrases else scan
        # PostgreSQL reads each adapter's text body (0015) instead: exactly the same test for a literal q,
        # a narrowing that the scan decides for one with wildcards; a literal q with punctuation or spaces
        # is found by the body squeezed (0016), where its words meet.
        on_body = body_test([like, *typed], scan=scan, indexed=test is LowerLike, exact=body_safe(q),
                            squeeze=squeezed(q))
        clauses.append(TextBody(text, on_body))
    if base_model:
        clauses.append(named.setdefault("base_model", Adapter.base_model == base_model))
    if method:
        clauses.append(named.setdefault("method", func.upper(Adapter.method) == method.upper()))
    if min_rank is not None:
        clauses.append(NoIndexSQLite(col(Adapter.max_rank)) >= min_rank)
    if max_rank is not None:
        clauses.append(NoIndexSQLite(col(Adapter.rank)) <= max_rank)
    if owner:
        clauses.append(func.lower(Adapter.owner) == owner.lower())
    if kind:
        clauses.append(named.setdefault("kind", col(Adapter.kind) == kind.lower()))
    if tag:
        clauses.append(named.setdefault("tag", col(Adapter.id).in_(select(Tag.adapter_id).where(Tag.name == tag))))
    if target_module:
        # JSON arrays are stored as text on both backends; match the quoted element.
        from sqlalchemy import String, cast

        clauses.append(cast(Adapter.target_modules, String).like(f'%"{target_module}"%'))
    return Filters(clauses, principal=principal, given=given, named=named)


class Filters(list):
    """:func:`search_filters`' clauses, and the filters they came from: while
    the list holds exactly the clauses it was built with (nothing added or
    removed), :func:`summary_source` may answer its counts from the summary tables."""

    def __init__(self, clauses: list[Any], *, principal: Principal | None, given: dict[str, Any],
                 named: dict[str, Any] | None = None) -> None:
        super().__init__(clauses)
        self.named = named or {}
        self.principal = principal
        self.given = {k: v for k, v in given.items() if v not in (None, "")}
        self._built = tuple(clauses)

    def unchanged(self) -> bool:
        return len(self) == len(self._built) and all(a is b for a, b in zip(self, self._built, strict=True))


#: The summary tables (migrations 0008, 0009, 0013): the filters each can apply, and the facets it counts.
SUMMARIES: tuple[tuple[type, frozenset[str], frozenset[str]], ...] = (
    (AdapterCount, frozenset({"kind", "base_model", "method", "min_rank", "max_rank"}),
     frozenset({"kind", "base_model", "method"})),
    # Not with an owner filter: the adapter table's lower(owner) index finds an owner's few rows faster
    # than this table (thousands of owners, no such index) can be read.
    (AdapterOwnerCount, frozenset({"kind", "method"}), frozenset({"kind", "method", "owner"})),
    # Only with a tag filter (summary_source): it counts tags, one per adapter for each tag name.
    (AdapterTagCount, frozenset({"tag", "kind", "method"}), frozenset({"kind", "method"})),
    # Keyed by (facet, value) as well: the base model and owner facets beside a tag (migration 0013).
    (AdapterTagFacetCount, frozenset({"tag", "kind", "method"}), frozenset({"base_model", "owner"})),
    # The owner facet beside a rank range (0013): with no kind or method filter.
    (AdapterOwnerRankCount, frozenset({"min_rank", "max_rank"}), frozenset({"owner"})),
)
#: The summary tables that count only with a tag filter.
TAGGED = (AdapterTagCount, AdapterTagFacetCount)


def summary_source(clauses: list[Any], facet: str | None = None) -> type | None:
    """The summary table that counts what ``clauses`` match (by ``facet``,
    when given), or None when only the rows can (a text query, a target
    module, a tag beside filters other than kind and method, a list changed
    after :func:`search_filters`)."""
    if not isinstance(clauses, Filters) or not clauses.unchanged():
        return None
    given = clauses.given
    if any(abs(given[k]) >= NO_RANK for k in ("min_rank", "max_rank") if k in given):
        return None  # a bound past the NULL ranks' keys
    for table, filters, facets in SUMMARIES:
        if given.keys() <= filters and (facet is None or facet in facets) and (
                ("tag" in given) == (table in TAGGED)):
            return table
    return None


def summary_counts(session: Session, clauses: Filters, table: Any, facet: str | None) -> list[tuple[Any, int]]:
    """(value of ``facet``, count) among what ``clauses`` match, most first,
    then by value, from ``table`` (``facet`` None: one row, the count).

    Visibility is :func:`visible_clause`'s: the summary counts public rows
    for everyone and every row for a principal who owns every namespace; a
    principal who owns some adds a live count of the private rows in them
    (few, found by the ``lower(owner)`` index), the rows
    ``visible_clause(principal)`` admits beyond the public ones."""
    where, owned = summary_where(clauses, table)
    if table is AdapterTagFacetCount:  # one facet's values (never without a facet: summary_source)
        where.append(col(table.facet) == facet)
    values: list[Any] = []
    if facet:
        values.append((col(table.value) if table is AdapterTagFacetCount else getattr(table, facet)).label("value"))
    parts: list[Any] = [select(*values, col(table.n).label("n")).where(*where)]  # type: ignore[call-overload]
    if owned:  # the private rows this principal reads
        live: Any = live_column(facet) if facet else None
        private = select(*([live.label("value")] if facet else []), func.count().label("n")).where(  # type: ignore[call-overload]
            *clauses, col(Adapter.private) == True)  # noqa: E712 - SQL
        parts.append(private.group_by(live) if facet else private)
    both = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    total = cast(func.coalesce(func.sum(both.c.n), 0), BigInteger)
    if facet is None:
        return [(None, session.exec(select(total)).one())]
    return list(session.exec(select(both.c.value, total).group_by(both.c.value)
                             .order_by(total.desc(), both.c.value)).all())


def live_column(facet: str) -> Any:
    """The adapter column of ``facet`` as the summary tables key it (a NULL base model as ``''``)."""
    column: Any = FACET_COLUMNS[facet]
    return func.coalesce(column, "") if facet == "base_model" else column


def summary_where(clauses: Filters, table: Any) -> tuple[list[Any], set[str] | None]:
    """The WHERE clauses on summary ``table`` for what ``clauses`` match,
    and the namespaces their principal owns (None: every one; see
    :func:`summary_counts`: with some, its private rows are counted live)."""
    given, principal = clauses.given, clauses.principal
    where: list[Any] = []
    if "tag" in given:
        where.append(col(table.tag) == given["tag"])
    if "kind" in given:
        where.append(col(table.kind) == given["kind"].lower())
    if "base_model" in given:
        where.append(col(table.base_model) == given["base_model"])
    if "method" in given:
        where.append(func.upper(col(table.method)) == given["method"].upper())
    if "min_rank" in given:
        where.append(col(table.max_rank) >= given["min_rank"])
    if "max_rank" in given:
        where.append(col(table.rank) <= given["max_rank"])
    owned = principal.owned_namespaces() if principal is not None else set()
    if owned is not None:
        where.append(col(table.private) == False)  # noqa: E712 - SQL
    return where, owned


#: A count that only the rows can give (a text query, a target module, a tag beside other filters) stops
#: this many rows past the page's offset: beyond, ``total`` is a lower bound (``exact`` False). What
#: Elasticsearch's ``track_total_hits`` and GitHub's search do: counting every match of a common word
#: grows with the table, and nobody pages through a thousand results. Summary-table counts stay exact.
COUNT_BOUND = 1000


class SearchResult(NamedTuple):
    """One page of adapters, and how many match: exactly, or at least ``total`` when ``exact`` is False."""

    items: list[Adapter]
    total: int
    exact: bool = True


def search_adapters(
    session: Session, *, clauses: list[Any], sort: str = "updated", order: str = "desc", page: int = 1,
    per_page: int = 20, total: int | None = None, bound: int | None = COUNT_BOUND,
) -> SearchResult:
    """One page of adapters matching ``clauses``, and the total count.

    The caller may know the count (``total``, counted with the same
    ``clauses`` in the same transaction). A count from a summary table is
    a second query only when the page is full (or past the end): a short
    page already says how many match; on SQLite it comes first, where it
    picks the page's plan (:func:`sort_drives`). A count from the rows stops
    ``bound`` rows past the offset (None: exact; see :data:`COUNT_BOUND`),
    and always past the page, so a full page knows whether another follows;
    it comes first, and when it stops short of the bound it names the rows
    (:func:`search_sql.bounded_matches`), which the page then reads by id.
    """
    if sort not in SORTS:
        raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    column = SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), col(Adapter.id).asc()]
    offset = (page - 1) * per_page
    # The least SQLite's plan needs to know too (sort_drives), read here: tests change it.
    at_most = None if bound is None else offset + max(bound, search_sql.SORT_DRIVES_AT, per_page + 1)
    walks_rank = sort == "rank" and isinstance(clauses, Filters) and clauses.unchanged()
    bounds = rank_bounds(clauses.given) if isinstance(clauses, Filters) and walks_rank else []
    page_clauses, exact = [*clauses, *bounds], True
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":  # how many match picks SQLite's plan (see sort_drives)
        page_clauses = _text_plan(session, clauses)
    if total is None and at_most is not None and summary_source(clauses) is None:
        # Only the rows can count: one reading of them counts and, when they are fewer than the bound,
        # hands back their ids, so the page reads those rows alone (by primary key) and sorts them.
        rows = page_clauses if dialect == "sqlite" else clauses
        matches = bounded_matches(rows, at_most=at_most, dialect=dialect, sort=(column, order))
        total, ids = session.exec(matches).one()
        exact = total < at_most
        # (On SQLite, unless so many match that the page would walk the sort's index: tests lower the mark.)
        if exact and offset >= total:  # no match on this page: nothing to read
            return SearchResult([], total)
        if exact and (dialect != "sqlite" or sort_drives(page_clauses, total=total, offset=offset) is page_clauses):
            ids, skip = page_of(ids, offset=offset, per_page=per_page, dialect=dialect)
            found = [id_in(ids, dialect=dialect), *(OffIndex(like_scan(c)) for c in clauses)]
            items = list(session.exec(select(Adapter).where(*found).order_by(*ordering).offset(skip)
                                      .limit(per_page)))
            return SearchResult(items, total)
    if dialect == "sqlite":
        if total is None:
            total, exact = _count(session, clauses=clauses, rows=page_clauses, at_most=at_most)
        driven = sort_drives(page_clauses, total=total, offset=offset)
        page_clauses = [*driven, *bounds] if driven is not page_clauses else driven  # bounds: for the walk
    items = list(session.exec(select(Adapter).where(*page_clauses).order_by(*ordering).offset(offset).limit(per_page)))
    if len(items) < per_page and (items or offset == 0):
        return SearchResult(items, offset + len(items))
    if total is None:
        total, exact = _count(session, clauses=clauses, at_most=at_most)
    return SearchResult(items, total, exact)


def count_adapters(session: Session, *, clauses: list[Any], rows: list[Any] | None = None) -> int:
    """How many adapters ``clauses`` match: from a summary table when one can
    tell (:func:`summary_source`), else from the rows, through ``rows`` when
    given (the same test, as :func:`_text_plan` planned it), else :func:`_text_plan`'s."""
    return _count(session, clauses=clauses, rows=rows)[0]


def _count(
    session: Session, *, clauses: list[Any], rows: list[Any] | None = None, at_most: int | None = None
) -> tuple[int, bool]:
    """:func:`count_adapters`, counting from the rows at most ``at_most``
    (:func:`search_sql.bounded_count`), and whether the count is exact."""
    table = summary_source(clauses)
    if table is not None:
        assert isinstance(clauses, Filters)
        return summary_counts(session, clauses, table, None)[0][1], True
    where = rows if rows is not None else _text_plan(session, clauses)
    if at_most is None:
        return session.exec(select(func.count()).select_from(Adapter).where(*where)).one(), True
    n = session.exec(bounded_count(where, at_most=at_most, dialect=session.get_bind().dialect.name)).one()
    return n, n < at_most


def _text_plan(session: Session, clauses: list[Any]) -> list[Any]:
    """SQLite's clauses for a text query beside filters the summary tables
    count: when those filters match few rows, one of them finds them by its
    index and the LIKE decides (:func:`search_sql.filters_drive`; one more
    statement, on the summary). Otherwise, and elsewhere, ``clauses``."""
    if (not isinstance(clauses, Filters) or not clauses.unchanged() or "q" not in clauses.given
            or session.get_bind().dialect.name != "sqlite"):
        return clauses
    driver = next((clauses.named[k] for k in DRIVERS if k in clauses.named), None)
    if driver is None:
        return clauses
    others = search_filters(principal=clauses.principal, **{k: v for k, v in clauses.given.items() if k != "q"})
    if summary_source(others) is None:
        return clauses
    keep = (driver, *clauses.named["always"])
    return filters_drive(clauses, keep=keep, matching=_plan_count(session, others))


def _plan_count(session: Session, others: list[Any]) -> int:
    """:func:`count_adapters` of ``others`` (a :class:`Filters`) for
    :func:`_text_plan`, once per transaction (a page's facets and its rows
    often ask for the same one). The count only picks the plan, never a row:
    whatever it says, the rows are the same."""
    assert isinstance(others, Filters)
    owned = others.principal.owned_namespaces() if others.principal is not None else set()
    key = (None if owned is None else tuple(sorted(owned)), tuple(sorted(others.given.items())))
    session.connection()  # the transaction begins here if it has not: the memo is its own
    transaction = session.get_transaction()
    memo: tuple[Any, dict[Any, int]] | None = session.info.get("search_plan_counts")
    if memo is None or memo[0] is not transaction:
        memo = session.info["search_plan_counts"] = (transaction, {})
    if key not in memo[1]:
        memo[1][key] = count_adapters(session, clauses=others)
    return memo[1][key]


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
