"""The catalog's query: parsed from the URL, mapped onto the same
``crud.search_filters`` the API and the CLI use, and turned back into links
so that every list is a shareable URL."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session
from starlette.datastructures import QueryParams

from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud.search import facet_groups
from peft_hub.hub.models import Adapter, pk
from peft_hub.hub.web.charts import headline

PER_PAGE = 20
FILTERS = ("q", "base_model", "method", "owner", "tag", "min_rank", "max_rank", "kind")
FACETS = ("base_model", "method", "owner", "kind")
#: Repo kinds the catalog filters on, and their labels.
KINDS = {"model": "Models", "adapter": "Adapters"}
#: Facets that can have thousands of values: past :data:`SELECT_MAX` values their filter
#: is a text field with a type-ahead (``/api/facets/...``), and the Browse list shows the first :data:`SHOWN`.
TYPEAHEAD = ("base_model", "owner")
SELECT_MAX = 50
SHOWN = 20
#: Filters the facet indexes (migration 0005) do not cover.
UNINDEXED = ("q", "tag")
#: Sortable columns, and the order a first click on each gives.
SORTS = {"updated": "desc", "name": "asc", "rank": "asc", "size": "asc", "downloads": "desc"}


#: Larger numbers in a query mean nothing here and would overflow the database's integers.
MAX_QUERY_INT = 2**31 - 1


def parse_int(text: str | None, problems: list[str], what: str, *, maximum: int = MAX_QUERY_INT) -> int | None:
    """A whole number from a query parameter, or None with a note in ``problems``."""
    if text is None or not text.strip():
        return None
    try:
        value = int(text) if len(text) <= 12 else -1
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        problems.append(f"{what} must be a whole number from 0 to {maximum}; {text[:20]!r} was ignored")
        return None
    return value


@dataclass
class CatalogQuery:
    q: str | None = None
    base_model: str | None = None
    method: str | None = None
    owner: str | None = None
    tag: str | None = None
    min_rank: int | None = None
    max_rank: int | None = None
    kind: str | None = None
    sort: str = "updated"
    order: str = "desc"
    page: int = 1
    problems: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, params: QueryParams, **fixed: str) -> CatalogQuery:
        """Read the URL leniently: a bad value is reported, never a 422 page."""
        problems: list[str] = []
        text = {k: (params.get(k) or "").strip() or None for k in ("q", "base_model", "method", "owner", "tag")}
        text.update(fixed)
        kind = (params.get("kind") or "").strip().lower() or None
        if kind is not None and kind not in KINDS:
            problems.append(f"unknown kind {kind[:20]!r}; showing every kind")
            kind = None
        sort = params.get("sort") or "updated"
        if sort not in SORTS:
            problems.append(f"unknown sort {sort!r}; sorted by last update")
            sort = "updated"
        asked = params.get("order")
        order = asked if asked in ("asc", "desc") else SORTS[sort]
        page = parse_int(params.get("page"), problems, "page", maximum=10_000) or 1
        return cls(**text, min_rank=parse_int(params.get("min_rank"), problems, "min rank"),
                   max_rank=parse_int(params.get("max_rank"), problems, "max rank"), kind=kind,
                   sort=sort, order=order, page=max(page, 1), problems=problems)

    def filters(self, without: str | None = None) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FILTERS if k != without}

    @property
    def active(self) -> bool:
        return any(v not in (None, "") for v in self.filters().values())

    def url(self, path: str = "/", **changes: Any) -> str:
        """This query with ``changes``; a changed filter or sort goes back to page 1."""
        if changes and "page" not in changes:
            changes["page"] = 1
        state = asdict(replace(self, **changes))
        state.pop("problems")
        if state["sort"] == "updated" and state["order"] == "desc":
            state.pop("sort"), state.pop("order")
        if state.get("page") == 1:
            state.pop("page")
        pairs = [(k, v) for k, v in state.items() if v not in (None, "")]
        return path + ("?" + urlencode(pairs) if pairs else "")

    def sort_url(self, path: str, column: str) -> str:
        """Clicking the sorted column flips the order; another column starts at its natural order."""
        if column == self.sort:
            return self.url(path, sort=column, order="asc" if self.order == "desc" else "desc")
        return self.url(path, sort=column, order=SORTS[column])


def search(
    session: Session, principal: Principal | None, query: CatalogQuery, total: int | None = None
) -> tuple[list[Adapter], int]:
    """One page of the catalog, and how many match (``total`` when already known: see :func:`counts`)."""
    clauses = crud.search_filters(principal=principal, **query.filters())
    return crud.search_adapters(session, clauses=clauses, sort=query.sort, order=query.order,
                                page=query.page, per_page=PER_PAGE, total=total)


def counts(
    session: Session, principal: Principal | None, query: CatalogQuery
) -> tuple[dict[str, list[tuple[str, int]]], int | None]:
    """Counts per base model, method, owner and kind, and, when no kind is
    picked, how many repos match the whole query: the kind facet's counts
    then cover exactly the page's rows, so they add up to its total, and the
    page needs no count of its own.

    Each facet ignores its own filter, so the alternatives stay visible (and
    countable) once one is picked. Each facet is computed once: one indexed
    query per facet, or, with a filter that no facet index answers (a text
    query, a tag), one statement for all the facets that share their
    filters, which reads the matching rows once."""
    groups: dict[tuple, list[str]] = {}
    for facet in FACETS:
        active = {k: v for k, v in query.filters(without=facet).items() if v not in (None, "")}
        groups.setdefault(tuple(sorted(active.items())), []).append(facet)
    out: dict[str, list[tuple[str | None, int]]] = {}
    for key, names in groups.items():
        clauses = crud.search_filters(principal=principal, **dict(key))
        one_pass = any(name in UNINDEXED for name, _ in key)
        out.update(facet_groups(session, clauses=clauses, names=tuple(names), one_pass=one_pass))
    total = sum(n for _, n in out["kind"]) if query.kind in (None, "") else None
    return {facet: [(v, n) for v, n in out[facet] if v] for facet in FACETS}, total


def facet_counts(
    session: Session, principal: Principal | None, query: CatalogQuery
) -> dict[str, list[tuple[str, int]]]:
    """The facets of :func:`counts`."""
    return counts(session, principal, query)[0]


def rows(session: Session, adapters: list[Adapter]) -> list[dict[str, Any]]:
    """Result rows with each adapter's headline eval (newest on its main revision)."""
    evals = crud.main_revision_evals(session, adapter_ids=[pk(a) for a in adapters])
    return [{"adapter": a, "headline": headline(evals.get(pk(a), []))} for a in adapters]


def pages(page: int, total: int) -> tuple[int, list[int | None]]:
    """The number of pages and which page numbers to show (None = a gap)."""
    last = max(1, -(-total // PER_PAGE))
    shown = sorted({1, last, *range(max(1, page - 2), min(last, page + 2) + 1)})
    out: list[int | None] = []
    for n in shown:
        if out and n - (out[-1] or 0) > 1:
            out.append(None)
        out.append(n)
    return last, out
