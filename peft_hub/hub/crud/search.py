"""Search, facets and the catalog's queries, with the visibility rule they share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, literal, or_, true, tuple_, union_all
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col, select

from peft_hub.errors import InvalidInputError
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud.search_sql import (  # noqa: F401 - FTS_TABLE, fts_phrases: part of this module's surface
    FTS_TABLE,
    TRIGRAM,
    LowerLike,
    LowerLikeScan,
    NoIndexSQLite,
    TextLike,
    escape_like,
    fts_phrases,
    sort_drives,
)
from peft_hub.hub.models import NO_RANK, Adapter, AdapterCount, AdapterOwnerCount, Eval, RevisionFile, Tag

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
    if min_rank is not None:
        clauses.append(NoIndexSQLite(col(Adapter.max_rank)) >= min_rank)
    if max_rank is not None:
        clauses.append(NoIndexSQLite(col(Adapter.rank)) <= max_rank)
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
    return Filters(clauses, principal=principal, given=given)


class Filters(list):
    """:func:`search_filters`' clauses, and the filters they came from: while
    the list holds exactly the clauses it was built with (nothing added or
    removed), :func:`summary_source` may answer its counts from the summary tables."""

    def __init__(self, clauses: list[Any], *, principal: Principal | None, given: dict[str, Any]) -> None:
        super().__init__(clauses)
        self.principal = principal
        self.given = {k: v for k, v in given.items() if v not in (None, "")}
        self._built = tuple(clauses)

    def unchanged(self) -> bool:
        return len(self) == len(self._built) and all(a is b for a, b in zip(self, self._built, strict=True))


#: The summary tables (migration 0008): the filters each can apply, and the facets it counts.
SUMMARIES: tuple[tuple[type, frozenset[str], frozenset[str]], ...] = (
    (AdapterCount, frozenset({"kind", "base_model", "method", "min_rank", "max_rank"}),
     frozenset({"kind", "base_model", "method"})),
    # Not with an owner filter: the adapter table's lower(owner) index finds an owner's few rows faster
    # than this table (thousands of owners, no such index) can be read.
    (AdapterOwnerCount, frozenset({"kind", "method"}), frozenset({"kind", "method", "owner"})),
)


def summary_source(clauses: list[Any], facet: str | None = None) -> type | None:
    """The summary table that counts what ``clauses`` match (by ``facet``,
    when given), or None when only the rows can (a text query, a tag, a
    target module, a list changed after :func:`search_filters`)."""
    if not isinstance(clauses, Filters) or not clauses.unchanged():
        return None
    given = clauses.given
    if any(abs(given[k]) >= NO_RANK for k in ("min_rank", "max_rank") if k in given):
        return None  # a bound past the NULL ranks' keys
    for table, filters, facets in SUMMARIES:
        if given.keys() <= filters and (facet is None or facet in facets):
            return table
    return None


def _summary_counts(session: Session, clauses: Filters, table: Any, facet: str | None) -> list[tuple[Any, int]]:
    """(value of ``facet``, count) among what ``clauses`` match, most first,
    then by value, from ``table`` (``facet`` None: one row, the count).

    Visibility is :func:`visible_clause`'s: the summary counts public rows
    for everyone and every row for a principal who owns every namespace; a
    principal who owns some adds a live count of the private rows in them
    (few, found by the ``lower(owner)`` index), the rows
    ``visible_clause(principal)`` admits beyond the public ones."""
    given, principal = clauses.given, clauses.principal
    where: list[Any] = []
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
    values: list[Any] = [getattr(table, facet).label("value")] if facet else []
    parts: list[Any] = [select(*values, col(table.n).label("n")).where(*where)]  # type: ignore[call-overload]
    if owned:  # the private rows this principal reads
        live: Any = FACET_COLUMNS[facet] if facet else None
        if facet == "base_model":
            live = func.coalesce(live, "")  # keyed as the summary keys it
        private = select(*([live.label("value")] if facet else []), func.count().label("n")).where(  # type: ignore[call-overload]
            *clauses, col(Adapter.private) == True)  # noqa: E712 - SQL
        parts.append(private.group_by(live) if facet else private)
    both = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    total = cast(func.coalesce(func.sum(both.c.n), 0), BigInteger)
    if facet is None:
        return [(None, session.exec(select(total)).one())]
    return list(session.exec(select(both.c.value, total).group_by(both.c.value)
                             .order_by(total.desc(), both.c.value)).all())


def summary_facets(session: Session, *, clauses: list[Any], names: tuple[str, ...]
                   ) -> dict[str, list[tuple[str | None, int]]]:
    """:func:`facet_groups` of those facets in ``names`` that the summary
    tables count for ``clauses`` (one statement each; the others are left
    out). One difference: the empty base models ('' and NULL) are one
    group, ``''``, as the summary keys them (the facets drop empty values;
    the counts still add up to the matches)."""
    tables = {name: summary_source(clauses, name) for name in names}
    if not isinstance(clauses, Filters):
        return {}
    return {name: _summary_counts(session, clauses, table, name) for name, table in tables.items() if table}


def search_adapters(
    session: Session, *, clauses: list[Any], sort: str = "updated", order: str = "desc", page: int = 1,
    per_page: int = 20, total: int | None = None,
) -> tuple[list[Adapter], int]:
    """One page of adapters matching ``clauses``, and the total count.

    The count is a second query only when the page is full (or past the end)
    and the caller does not know it (``total``, counted with the same
    ``clauses`` in the same transaction): a short page already says how many
    match. On SQLite it comes first, where it picks the page's plan (:func:`sort_drives`).
    """
    if sort not in SORTS:
        raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    column = SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), col(Adapter.id).asc()]
    offset = (page - 1) * per_page
    page_clauses = clauses
    if session.get_bind().dialect.name == "sqlite":  # how many match picks SQLite's plan (see sort_drives)
        total = total if total is not None else count_adapters(session, clauses=clauses)
        page_clauses = sort_drives(clauses, total=total, offset=offset)
    items = list(session.exec(select(Adapter).where(*page_clauses).order_by(*ordering).offset(offset).limit(per_page)))
    if len(items) < per_page and (items or offset == 0):
        return items, offset + len(items)
    return items, total if total is not None else count_adapters(session, clauses=clauses)


def count_adapters(session: Session, *, clauses: list[Any]) -> int:
    """How many adapters ``clauses`` match: from a summary table when one can tell (:func:`summary_source`)."""
    table = summary_source(clauses)
    if table is not None:
        assert isinstance(clauses, Filters)
        return _summary_counts(session, clauses, table, None)[0][1]
    return session.exec(select(func.count()).select_from(Adapter).where(*clauses)).one()


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

    Each facet the summary tables count for ``clauses`` comes from them
    (:func:`summary_facets`: there the empty base models are one group,
    ``''``); the others from the matching rows (:func:`_row_facet_groups`).
    """
    wanted = tuple(n for n in FACET_COLUMNS if names is None or n in names)
    grouped = summary_facets(session, clauses=clauses, names=wanted)
    rest = tuple(n for n in wanted if n not in grouped)
    if rest:
        grouped.update(_row_facet_groups(session, clauses=clauses, wanted=list(rest), one_pass=one_pass))
    return {n: grouped[n] for n in wanted}


def _row_facet_groups(
    session: Session, *, clauses: list[Any], wanted: list[str], one_pass: bool,
) -> dict[str, list[tuple[str | None, int]]]:
    """:func:`facet_groups` of ``wanted`` from the matching rows.

    On PostgreSQL all of them come from one ``GROUPING SETS`` statement
    that reads the matching rows once. On SQLite each facet is one indexed
    GROUP BY (migration 0005), or, with ``one_pass``, one statement groups
    the matching rows read once: cheaper when ``clauses`` cannot use an
    index (a text query).
    """
    grouped: dict[str, list[tuple[str | None, int]]] = {n: [] for n in wanted}
    if len(wanted) > 1 and session.get_bind().dialect.name == "postgresql":
        columns = [FACET_COLUMNS[n] for n in wanted]
        which, count = func.grouping(*columns).label("which"), func.count().label("n")  # which: a bit per column
        statement = select(which, *columns, count).where(*clauses)  # type: ignore[call-overload]
        bits = {(1 << len(wanted)) - 1 - (1 << (len(wanted) - 1 - i)): i for i in range(len(wanted))}
        for row in session.exec(statement.group_by(func.grouping_sets(*(tuple_(c) for c in columns)))
                                .order_by(which.desc(), count.desc(), *columns)).all():
            i = bits[row[0]]
            grouped[wanted[i]].append((row[1 + i], row[-1]))
    elif one_pass and len(wanted) > 1:
        matching = select(*(FACET_COLUMNS[n] for n in wanted)).where(*clauses).cte("matching")
        parts = [select(literal(i).label("facet"), matching.c[n].label("value"), func.count().label("n"))
                 .group_by(matching.c[n]) for i, n in enumerate(wanted)]
        both = union_all(*parts).subquery()
        rows = session.exec(select(both.c.facet, both.c.value, both.c.n)
                            .order_by(both.c.facet, both.c.n.desc(), both.c.value)).all()
        for i, value, number in rows:
            grouped[wanted[i]].append((value, number))
    else:
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
        where.append(LowerLike(column, escape_like(prefix.lower()) + "%", "\\"))
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
