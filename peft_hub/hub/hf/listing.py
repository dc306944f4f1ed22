"""Listing through HF tools: ``HfApi.list_models`` (``hf models ls``) over the
native search, and ``list_user_repos`` (``hf repos ls``).

Pages are cut as on huggingface.co: a ``Link: <…>; rel="next"`` header names
the next page, and ``huggingface_hub``'s ``paginate`` follows it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from peft_hub.adapter import KNOWN_PEFT_TYPES
from peft_hub.errors import AuthenticationError, InvalidInputError
from peft_hub.hub import crud
from peft_hub.hub.deps import SessionDep, StoreDep
from peft_hub.hub.hf import shapes
from peft_hub.hub.hf.access import HfPrincipalDep
from peft_hub.hub.models import Adapter
from peft_hub.hub.storage import BlobStore

router = APIRouter()

#: The most adapters one page holds (huggingface.co allows 1000 without ``full``).
PAGE_MAX = 100
#: HF sort keys -> the native ones (likes and trending have no counterpart: downloads stand in).
SORT_KEYS = {
    "lastModified": "updated", "last_modified": "updated", "downloads": "downloads", "likes": "downloads",
    "trendingScore": "downloads", "trending_score": "downloads", "id": "name", "modelId": "name",
    "createdAt": "updated", "created_at": "updated",
}
#: Filters every adapter here matches.
EVERYWHERE = frozenset({"peft", "safetensors", "library:peft", "library:safetensors"})


def _filter_clauses(principal: Any, search: str | None, author: str | None, filters: list[str]) -> list[Any]:
    """``filter`` values: ``base_model:[adapter:]X`` (a base model), a PEFT
    method (``lora``), ``peft``/``safetensors`` (everything here), else a tag."""
    clauses = crud.search_filters(principal=principal, q=search, owner=author)
    for value in filters:
        if value in EVERYWHERE:
            continue
        if value.startswith("base_model:"):
            base = value.removeprefix("base_model:").removeprefix("adapter:")
            clauses += crud.search_filters(principal=principal, base_model=base)
        elif value.upper() in KNOWN_PEFT_TYPES:
            clauses += crud.search_filters(principal=principal, method=value)
        else:
            clauses += crud.search_filters(principal=principal, tag=value)
    return clauses


@router.get("/api/models")
def list_models(
    request: Request, session: SessionDep, store: StoreDep, principal: HfPrincipalDep,
    search: str | None = Query(None, max_length=200), author: str | None = Query(None, max_length=64),
    filter: list[str] = Query([], max_length=16),  # noqa: B008 - FastAPI's Query(); HF's name; [] is copied per call
    sort: str | None = Query(None, max_length=32),
    direction: int = Query(-1, ge=-1, le=1), limit: int | None = Query(None, ge=1, le=10**6),
    full: bool = False, cardData: bool = False, p: int = Query(0, ge=0, le=10**6),  # noqa: N803 - HF's name
) -> JSONResponse:
    """Adapters matching the search, newest first unless ``sort`` says otherwise."""
    if any(len(f) > 300 for f in filter):
        raise InvalidInputError("a filter is at most 300 characters")
    if sort is not None and sort not in SORT_KEYS:
        raise InvalidInputError(f"sort must be one of {', '.join(sorted(SORT_KEYS))}")
    per_page = min(limit or PAGE_MAX, PAGE_MAX)
    clauses = _filter_clauses(principal, search, author, filter)
    # ``total`` may be a lower bound (a text query's count stops past a bound): enough to say a next page exists.
    items, total, _ = crud.search_adapters(session, clauses=clauses, sort=SORT_KEYS[sort or "lastModified"],
                                        order="asc" if direction == 1 else "desc", page=p + 1, per_page=per_page)
    body = [_item(session, store, a, full=full, card=cardData) for a in items]
    headers = {}
    if (p + 1) * per_page < total and (limit is None or (p + 1) * per_page < limit):
        headers["Link"] = f'<{request.url.include_query_params(p=p + 1)}>; rel="next"'
    return JSONResponse(body, headers=headers)


def _item(session: Session, store: BlobStore, adapter: Adapter, *, full: bool, card: bool) -> dict[str, Any]:
    """A list entry: repo info at ``main``, with files only when ``full`` and the card's data only when asked."""
    revision = crud.resolve_revision(session, adapter=adapter, rev="main")
    files = crud.revision_files(session, revision=revision)
    info = shapes.model_info(adapter, revision, files, shapes.card_metadata(store, files) if card or full else {})
    info["_id"] = str(adapter.id)
    if not full:
        info.pop("siblings")
    if not (card or full):
        info.pop("cardData")
    return info


@router.get("/api/settings/repositories")
@router.get("/api/organizations/{namespace}/settings/repositories")
def list_user_repos(
    session: SessionDep, principal: HfPrincipalDep, namespace: str | None = None
) -> list[dict[str, Any]]:
    """``hf repos ls``: the caller's adapters (or an organisation's that the caller can see), with storage."""
    if principal is None:
        raise AuthenticationError("sign in (a peft-hub token) to list your repositories")
    owner = namespace or principal.user.name
    clauses = crud.search_filters(principal=principal, owner=owner)
    items = crud.search_adapters(session, clauses=clauses, per_page=1000).items
    total = sum(a.total_size for a in items) or 1
    return [
        {"id": f"{a.owner}/{a.name}", "type": "model", "updatedAt": shapes.iso(a.updated_at),
         "visibility": "private" if a.private else "public", "storage": a.total_size,
         "storagePercent": 100.0 * a.total_size / total}
        for a in items
    ]
