"""``/api/facets/{facet}``: the values of a search facet that start with a
prefix, most used first. The catalog's owner and base-model filters use it
as a type-ahead, since those facets can have thousands of values."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from peft_hub.hub.crud.facet_counts import facet_values
from peft_hub.hub.crud.search import search_filters
from peft_hub.hub.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api/facets", tags=["search"])

#: The most values one answer holds.
MAX_LIMIT = 50


@router.get("/{facet}")
def facet(
    facet: Literal["owner", "base_model"],
    session: SessionDep,
    principal: PrincipalDep,
    prefix: str = Query("", max_length=100),
    limit: int = Query(10, ge=1, le=MAX_LIMIT),
) -> dict[str, Any]:
    """Values of ``facet`` among the repos the caller can read that start
    with ``prefix`` (any case), with how many repos have each."""
    clauses = search_filters(principal=principal)
    rows = facet_values(session, clauses=clauses, facet=facet, prefix=prefix.strip(), limit=limit)
    return {"facet": facet, "prefix": prefix.strip(), "values": [{"value": v, "count": c} for v, c in rows]}
