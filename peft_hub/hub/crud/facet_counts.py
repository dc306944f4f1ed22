"""Facets: how many matching repos share each base model, method, owner and
kind, from the summary tables where they count them (:mod:`.search`), else
from the matching rows; and the type-ahead's values of one facet."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, cast, func, literal, tuple_, union_all
from sqlmodel import Session, col, select

from peft_hub.hub.crud.search import (
    FACET_COLUMNS,
    Filters,
    _text_plan,
    live_column,
    summary_counts,
    summary_source,
    summary_where,
)
from peft_hub.hub.crud.search_sql import LowerLike, escape_like
from peft_hub.hub.models import Adapter, AdapterTagFacetCount


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
    by_table: dict[Any, list[str]] = {}
    for name, table in tables.items():
        if table is not None:
            by_table.setdefault(table, []).append(name)
    out: dict[str, list[tuple[str | None, int]]] = {}
    for table, shared in by_table.items():
        if len(shared) == 1:
            out[shared[0]] = summary_counts(session, clauses, table, shared[0])
        elif table is AdapterTagFacetCount:
            out.update(_tag_facet_groups(session, clauses, tuple(shared)))
        else:
            out.update(_summary_groups(session, clauses, table, tuple(shared)))
    return {name: out[name] for name in names if name in out}


def _tag_facet_groups(session: Session, clauses: Filters, names: tuple[str, ...]
                      ) -> dict[str, list[tuple[str | None, int]]]:
    """:func:`_summary_groups` on ``adapter_tag_facet_count``, whose rows
    are keyed by facet and value: one seek per facet, in one statement."""
    table = AdapterTagFacetCount
    where, owned = summary_where(clauses, table)
    parts: list[Any] = [select(col(table.facet).label("facet"), col(table.value).label("value"),
                               col(table.n).label("n")).where(*where, col(table.facet).in_(names))]
    for name in names if owned else ():  # the private rows this principal reads, as summary_counts counts them
        live = live_column(name)
        parts.append(select(literal(name).label("facet"), live.label("value"), func.count().label("n"))
                     .where(*clauses, col(Adapter.private) == True).group_by(live))  # noqa: E712 - SQL
    matched: Any = union_all(*parts) if len(parts) > 1 else parts[0]
    keys = matched.subquery()
    total = cast(func.coalesce(func.sum(keys.c.n), 0), BigInteger)
    out: dict[str, list[tuple[str | None, int]]] = {n: [] for n in names}
    for facet, value, number in session.exec(select(keys.c.facet, keys.c.value, total)
                                             .group_by(keys.c.facet, keys.c.value)
                                             .order_by(keys.c.facet, total.desc(), keys.c.value)).all():
        out[facet].append((value, number))
    return out


def _summary_groups(session: Session, clauses: Filters, table: Any, names: tuple[str, ...]
                    ) -> dict[str, list[tuple[str | None, int]]]:
    """:func:`summary_counts` of several facets of one summary table in one
    statement: the keys ``clauses`` match (and the private rows counted
    live) are read once, then grouped by each facet."""
    where, owned = summary_where(clauses, table)
    stored = [getattr(table, n).label(n) for n in names]
    parts: list[Any] = [select(*stored, col(table.n).label("n")).where(*where)]  # type: ignore[call-overload]
    if owned:  # the private rows this principal reads, as summary_counts counts them
        live = [live_column(n) for n in names]
        labels = [c.label(n) for c, n in zip(live, names, strict=True)]
        private = select(*labels, func.count().label("n"))  # type: ignore[call-overload]
        parts.append(private.where(*clauses, col(Adapter.private) == True).group_by(*live))  # noqa: E712 - SQL
    matched: Any = union_all(*parts) if len(parts) > 1 else parts[0]
    keys = matched.cte("summary_keys")
    groups = [select(literal(i).label("facet"), keys.c[n].label("value"),
                     cast(func.coalesce(func.sum(keys.c.n), 0), BigInteger).label("n")).group_by(keys.c[n])
              for i, n in enumerate(names)]
    both = union_all(*groups).subquery()
    out: dict[str, list[tuple[str | None, int]]] = {n: [] for n in names}
    for i, value, number in session.exec(select(both.c.facet, both.c.value, both.c.n)
                                         .order_by(both.c.facet, both.c.n.desc(), both.c.value)).all():
        out[names[i]].append((value, number))
    return out


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
    clauses = _text_plan(session, clauses)  # SQLite: a text query beside few rows is decided over those rows
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
