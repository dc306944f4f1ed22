"""The catalog's query: parsed from the URL, mapped onto the same
``crud.search_filters`` the API and the CLI use, and turned back into links
so that every list is a shareable URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote_plus

from sqlmodel import Session
from starlette.datastructures import QueryParams

from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud.facet_counts import facet_groups
from peft_hub.hub.models import Adapter, Eval, pk
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


#: The query's fields that a link carries, in the order a link lists them.
URL_FIELDS = (*FILTERS, "sort", "order", "page")


def encode_pair(key: str, value: Any) -> str:
    """One ``key=value`` pair exactly as ``urllib.parse.urlencode`` writes it."""
    return f"{quote_plus(key)}={quote_plus(value if isinstance(value, (str, bytes)) else str(value))}"


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
    #: (ids of the fields in :data:`URL_FIELDS`, their values, their encoded ``key=value`` pairs): see :meth:`url`.
    _encoded: tuple[tuple, tuple, dict[str, str]] | None = field(default=None, init=False, repr=False, compare=False)

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
        """This query with ``changes``; a changed filter or sort goes back to page 1.

        A page links to this query about a hundred times (each facet value,
        each sort and page link), so the unchanged fields' ``key=value``
        pairs are encoded once per state of the query and reused."""
        if unknown := changes.keys() - URL_FIELDS:
            raise TypeError(f"not a field of the catalog query: {', '.join(sorted(unknown))}")
        if changes and "page" not in changes:
            changes["page"] = 1
        state = tuple(map(self.__getattribute__, URL_FIELDS))
        # Keyed by the values' identities, not by equality (1 == True, but they are written
        # differently); the cache holds the values, so no other object can take their ids.
        ids = tuple(map(id, state))
        if self._encoded is None or self._encoded[0] != ids:
            fields = zip(URL_FIELDS, state, strict=True)
            self._encoded = (ids, state, {k: encode_pair(k, v) for k, v in fields if v not in (None, "")})
        encoded = self._encoded[2]
        values = dict(zip(URL_FIELDS, state, strict=True)) | changes
        default_order = values["sort"] == "updated" and values["order"] == "desc"
        pairs = [
            encoded[k] if k not in changes else encode_pair(k, v)
            for k, v in values.items()
            if v not in (None, "") and not (default_order and k in ("sort", "order")) and not (k == "page" and v == 1)
        ]
        return path + ("?" + "&".join(pairs) if pairs else "")

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
    # Exact: the page counts its facets over the same rows anyway, and its pager needs the last page.
    return crud.search_adapters(session, clauses=clauses, sort=query.sort, order=query.order,
                                page=query.page, per_page=PER_PAGE, total=total, bound=None)[:2]


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
    filters, which reads the matching rows once. Facets whose filters the
    summary tables (migration 0008) cover are read from them instead."""
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


#: The Browse lists, in page order, and their headings.
BROWSE = (("kind", "Kind"), ("base_model", "Base models"), ("method", "Methods"), ("owner", "Owners"))


# Rows and links are named tuples, not dicts: Jinja looks ``row.adapter`` up as
# an attribute first, and a dict makes it raise and catch an AttributeError.
class FacetLink(NamedTuple):
    label: str
    adapters: int  # how many the value has (``count`` would hide tuple.count)
    selected: bool
    href: str


class BrowseList(NamedTuple):
    facet: str
    title: str
    links: list[FacetLink]
    more: int  # values past the first SHOWN


class Row(NamedTuple):
    adapter: Adapter
    headline: Eval | None


def browse(query: CatalogQuery, path: str, facets: dict[str, list[tuple[str, int]]]) -> list[BrowseList]:
    """The Browse lists' first :data:`SHOWN` links per facet: a value's link
    picks it, or, when it is the one picked (compared case-blind), drops it.
    Built here rather than in the template, which would make each link in
    Jinja's slower expression machinery."""
    out = []
    for facet, title in BROWSE:
        picked = (getattr(query, facet) or "").upper()
        links = []
        for value, count in facets[facet][:SHOWN]:
            selected = picked == value.upper()
            links.append(FacetLink(KINDS.get(value, value) if facet == "kind" else value, count, selected,
                                   query.url(path, **{facet: None if selected else value})))
        out.append(BrowseList(facet, title, links, max(len(facets[facet]) - SHOWN, 0)))
    return out


def rows(session: Session, adapters: list[Adapter]) -> list[Row]:
    """Result rows with each adapter's headline eval (newest on its main revision)."""
    evals = crud.main_revision_evals(session, adapter_ids=[pk(a) for a in adapters])
    return [Row(a, headline(evals.get(pk(a), []))) for a in adapters]


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
