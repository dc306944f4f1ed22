"""The catalog's pages: catalog, namespace, adapter and compose preview.

Page routes take their path parameters through the ``hubowner``, ``hubns``
and ``hubref`` convertors (see :mod:`peft_hub.hub.web`), so they only ever match adapter-like
names and never shadow ``/api/…``, ``/static/…`` or ``….git`` paths.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from peft_hub.errors import NotFoundError
from peft_hub.hub import crud
from peft_hub.hub.deps import SessionDep, StoreDep
from peft_hub.hub.web import catalog, compose_preview, detail, model_page
from peft_hub.hub.web.render import Renderer
from peft_hub.hub.web.signin import WebPrincipal

MAX_PICKED = 16
PICKER_SIZE = 500


def make_router(renderer: Renderer) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def not_found(request: Request, message: str) -> Response:
        return renderer.page(request, "error.html", 404, title="Not found", message=message)

    def listing(request: Request, session: SessionDep, principal: WebPrincipal, template: str, path: str, **extra):
        fixed = {"owner": extra["owner"]} if "owner" in extra else {}
        query = catalog.CatalogQuery.parse(request.query_params, **fixed)
        facets, known = catalog.counts(session, principal, query)
        adapters, total = catalog.search(session, principal, query, total=known)
        last, page_list = catalog.pages(query.page, total)
        browse = catalog.browse(query, path, facets) if template == "catalog.html" else []
        return renderer.page(
            request, template, query=query, base_path=path, rows=catalog.rows(session, adapters), total=total,
            facets=facets, browse=browse, last_page=last, page_list=page_list,
            principal=principal, kinds=catalog.KINDS, select_max=catalog.SELECT_MAX, shown=catalog.SHOWN, **extra,
        )

    @router.get("/")
    def catalog_page(request: Request, session: SessionDep, principal: WebPrincipal) -> Response:
        """Search and browse adapters; every state of the list is in the URL."""
        return listing(request, session, principal, "catalog.html", "/")

    @router.get("/compose")
    def compose_page(request: Request, session: SessionDep, store: StoreDep, principal: WebPrincipal) -> Response:
        """Check a composition and show its ``peft-hub compose`` command."""
        params = request.query_params
        refs, weights = params.getlist("a"), params.getlist("w")
        pairs = [(r.strip(), (weights[i] if i < len(weights) else "").strip() or "1") for i, r in enumerate(refs)]
        pairs = [(r, w) for r, w in pairs if r][:MAX_PICKED]
        problems: list[str] = []
        rank = catalog.parse_int(params.get("rank"), problems, "rank") or None
        max_rank = catalog.parse_int(params.get("max_rank"), problems, "max rank") or compose_preview.DEFAULT_MAX_RANK
        density_text = (params.get("density") or "").strip()
        density = compose_preview.parse_weight(density_text) if density_text else None
        if density_text and density is None:
            problems.append(f"density must be a number; {density_text!r} was ignored")
        method = params.get("method") or "stack"
        preview = None
        if pairs:
            picked = []
            for ref, w in pairs:
                p = compose_preview.load(session, store, principal, ref)
                p.weight, p.weight_text = compose_preview.parse_weight(w), w
                picked.append(p)
            preview = compose_preview.build(picked, method, rank, density, max_rank)
        clauses = crud.search_filters(principal=principal, method="LORA")
        choices = crud.search_adapters(session, clauses=clauses, sort="name", order="asc", per_page=PICKER_SIZE).items
        return renderer.page(
            request, "compose.html", pairs=pairs, method=method, rank=rank, density=density_text,
            max_rank=max_rank, preview=preview, problems=problems, choices=choices,
            methods=compose_preview.METHODS, merge_methods=compose_preview.MERGE_METHODS, principal=principal,
        )

    @router.get("/{owner:hubowner}")
    def namespace_page(owner: str, request: Request, session: SessionDep, principal: WebPrincipal) -> Response:
        """An owner's adapters."""
        if crud.get_namespace(session, name=owner) is None:
            return not_found(request, f"There is no user or organisation called {owner!r}.")
        return listing(request, session, principal, "namespace.html", f"/{owner}", owner=owner)

    @router.get("/{owner:hubns}/{ref:hubref}")
    def adapter_page(owner: str, ref: str, request: Request, session: SessionDep, store: StoreDep,
                     principal: WebPrincipal) -> Response:
        """One adapter at a revision: ``/owner/name``, ``/owner/name@rev`` or ``?revision=rev``."""
        name, _, at = ref.partition("@")
        rev = at or request.query_params.get("revision") or None
        try:
            adapter = crud.get_adapter(session, owner=owner, name=name, principal=principal)
            revision = crud.resolve_revision(session, adapter=adapter, rev=rev)
        except NotFoundError as exc:
            hint = "" if principal else " If it is private, sign in to see it."
            return not_found(request, f"{exc}.{hint}")
        hub_url = str(request.base_url).rstrip("/")
        label = None if rev == "main" else rev
        if adapter.kind == "model":
            context = model_page.build(session, store, principal, hub_url, adapter, revision, label)
            return renderer.page(request, "model.html", principal=principal, **context)
        context = detail.build(session, store, principal, hub_url, adapter, revision, label)
        return renderer.page(request, "adapter.html", principal=principal, **context)

    return router
