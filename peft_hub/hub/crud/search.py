"""Search, facets and the catalog's queries, with the visibility rule they share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, or_, true
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col, select

from peft_hub.errors import InvalidInputError
from peft_hub.hub.auth import Principal
from peft_hub.hub.models import Adapter, Eval, RevisionFile, Tag

SORTS: dict[str, Mapped[Any]] = {
    "updated": col(Adapter.updated_at), "downloads": col(Adapter.downloads), "name": col(Adapter.name),
    "rank": col(Adapter.rank), "size": col(Adapter.total_size),
}


# --- search -----------------------------------------------------------------


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
        like = f"%{q.lower()}%"
        clauses.append(or_(
            func.lower(Adapter.name).like(like), func.lower(Adapter.owner).like(like),
            func.lower(Adapter.base_model).like(like), func.lower(Adapter.description).like(like),
        ))
    if base_model:
        clauses.append(Adapter.base_model == base_model)
    if method:
        clauses.append(func.upper(Adapter.method) == method.upper())
    if min_rank is not None:
        clauses.append(col(Adapter.max_rank) >= min_rank)
    if max_rank is not None:
        clauses.append(col(Adapter.rank) <= max_rank)
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
    per_page: int = 20,
) -> tuple[list[Adapter], int]:
    """One page of adapters matching ``clauses``, and the total count."""
    if sort not in SORTS:
        raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    column = SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), col(Adapter.id).asc()]
    total = session.exec(select(func.count()).select_from(Adapter).where(*clauses)).one()
    items = session.exec(
        select(Adapter).where(*clauses).order_by(*ordering).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return list(items), total


def facets(
    session: Session, *, clauses: list[Any], names: tuple[str, ...] | None = None
) -> dict[str, list[tuple[str, int]]]:
    """Counts per base model, method, owner and kind among matching repos
    (only the facets in ``names``, when given: one query each)."""
    out = {}
    by = (("base_model", col(Adapter.base_model)), ("method", col(Adapter.method)), ("owner", col(Adapter.owner)),
          ("kind", col(Adapter.kind)))
    for name, column in by:
        if names is not None and name not in names:
            continue
        rows = session.exec(
            select(column, func.count()).where(*clauses).group_by(column).order_by(func.count().desc(), column)
        ).all()
        out[name] = [(value, count) for value, count in rows if value]
    return out


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
