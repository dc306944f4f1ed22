"""Read side of the HF API: repo info, trees, refs, and ``/resolve`` downloads."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from peft_hub.adapter import CONFIG_NAME
from peft_hub.errors import (
    AdapterNotFoundError,
    EntryNotFoundError,
    InvalidInputError,
)
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal, require_scope
from peft_hub.hub.deps import SessionDep, SettingsDep, StoreDep
from peft_hub.hub.hf import shapes
from peft_hub.hub.hf.access import HfPrincipalDep, load_adapter
from peft_hub.hub.models import Adapter, Revision, RevisionFile
from peft_hub.hub.routes.adapters import blob_response
from peft_hub.hub.storage import BlobStore

router = APIRouter()

#: Tree page sizes, as on huggingface.co (fewer entries when expanded).
TREE_PAGE, TREE_PAGE_EXPANDED = 1000, 50


def _revision(session: Session, adapter: Adapter, rev: str) -> Revision:
    return crud.resolve_revision(session, adapter=adapter, rev=rev)


def _is_empty(session: Session, adapter: Adapter) -> bool:
    """Created by ``create_repo`` and never pushed to: no ``main`` yet."""
    return "main" not in crud.tags_of(session, adapter=adapter)


@router.get("/api/models/{owner}/{name}")
def model_info(owner: str, name: str, session: SessionDep, store: StoreDep, principal: HfPrincipalDep) -> dict[str, Any]:
    """Repo info at ``main``; a repo with no push yet has ``sha: null`` and no files."""
    adapter = load_adapter(session, principal, owner, name)
    if _is_empty(session, adapter):
        return shapes.model_info(adapter, None, [], {})
    return _info(session, store, adapter, _revision(session, adapter, "main"))


@router.get("/api/models/{owner}/{name}/revision/{rev}")
def model_info_at(
    owner: str, name: str, rev: str, session: SessionDep, store: StoreDep, principal: HfPrincipalDep
) -> dict[str, Any]:
    """Repo info at a tag or a 40-hex revision id."""
    adapter = load_adapter(session, principal, owner, name)
    return _info(session, store, adapter, _revision(session, adapter, rev))


def _info(session: Session, store: BlobStore, adapter: Adapter, revision: Revision) -> dict[str, Any]:
    files = crud.revision_files(session, revision=revision)
    return shapes.model_info(adapter, revision, files, shapes.card_metadata(store, files))


@router.get("/api/models/{owner}/{name}/tree/{rev}")
@router.get("/api/models/{owner}/{name}/tree/{rev}/{path:path}")
def tree(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, principal: HfPrincipalDep,
    path: str = "", recursive: bool = False, expand: bool = False,
    cursor: str | None = Query(None, max_length=64), limit: int | None = Query(None, ge=1, le=1000),
) -> JSONResponse:
    """The files of a revision, paged with a ``Link: <…>; rel="next"`` header.

    Adapters are flat, so ``recursive`` changes nothing and any ``path`` other
    than the root (or one file's own name) is missing.
    """
    adapter = load_adapter(session, principal, owner, name)
    revision = _revision(session, adapter, rev)
    files = crud.revision_files(session, revision=revision)
    if path.strip("/"):
        files = [f for f in files if f.path == path.strip("/")]
        if not files:
            raise EntryNotFoundError(f"{path} not found in {owner}/{name}@{rev}")
    page = min(limit or TREE_PAGE, TREE_PAGE_EXPANDED if expand else TREE_PAGE)
    start = _decode_cursor(cursor)
    items = [shapes.tree_entry(f, revision if expand else None) for f in files[start: start + page]]
    headers = {}
    if start + page < len(files):
        next_url = request.url.include_query_params(cursor=_encode_cursor(start + page))
        headers["Link"] = f'<{next_url}>; rel="next"'
    return JSONResponse(items, headers=headers)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        kind, _, offset = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "offset" and int(offset) >= 0:
            return int(offset)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInputError("invalid tree cursor")


@router.post("/api/models/{owner}/{name}/paths-info/{rev}")
async def paths_info(owner: str, name: str, rev: str, request: Request, principal: HfPrincipalDep,
                     session: SessionDep) -> list[dict[str, Any]]:
    """Tree entries for the listed paths (``HfApi.get_paths_info``); absent paths are left out."""
    form = await request.form()
    wanted = set(form.getlist("paths"))
    expand = str(form.get("expand", "")).lower() in ("1", "true")
    adapter = load_adapter(session, principal, owner, name)
    revision = _revision(session, adapter, rev)
    return [
        shapes.tree_entry(f, revision if expand else None)
        for f in crud.revision_files(session, revision=revision) if f.path in wanted
    ]


@router.get("/api/models/{owner}/{name}/refs")
def refs(owner: str, name: str, session: SessionDep, principal: HfPrincipalDep) -> dict[str, Any]:
    """``main`` as the branch, the other tags as git tags."""
    adapter = load_adapter(session, principal, owner, name)
    return shapes.refs(crud.tags_of(session, adapter=adapter))


@router.get("/api/whoami-v2")
def whoami(principal: HfPrincipalDep) -> dict[str, Any]:
    """The caller, as ``HfApi.whoami`` reads it."""
    principal: Principal = require_scope(principal, "read")
    role = "read" if principal.scope == "read" else "write"
    return {
        "type": "user", "id": str(principal.user.id), "name": principal.user.name, "fullname": principal.user.name,
        "isPro": False, "orgs": [{"type": "org", "name": org} for org in sorted(principal.orgs)],
        "auth": {"type": "access_token", "accessToken": {"displayName": "peft-hub token", "role": role}},
    }


@router.get("/api/models/{name}")
@router.get("/api/models/{name}/revision/{rev}", include_in_schema=False)
@router.head("/{name}/resolve/{rev}/{filename:path}", include_in_schema=False)
@router.get("/{name}/resolve/{rev}/{filename:path}", include_in_schema=False)
def single_segment_repo(name: str) -> None:
    """Ids without an owner (huggingface.co's legacy ``gpt2``) never exist here.

    Saying RepoNotFound lets clients handle it as such; PEFT, for one, asks for
    the base model's config by the bare name in ``base_model_name_or_path``.
    """
    raise AdapterNotFoundError(f"repository {name} not found: peft-hub repositories are named owner/name")


# --- /resolve ----------------------------------------------------------------


def _locate(
    session: Session, principal: Principal | None, owner: str, name: str, rev: str, filename: str
) -> tuple[Adapter, RevisionFile, dict[str, str]]:
    adapter = load_adapter(session, principal, owner, name)
    if rev == "main" and _is_empty(session, adapter):
        # An empty repo's main is an empty tree: every file is missing. transformers'
        # push_to_hub relies on this when it looks for an existing model card.
        raise EntryNotFoundError(f"{filename} not found: {owner}/{name} has no files yet")
    revision = _revision(session, adapter, rev)
    entry: RevisionFile | None = next((f for f in crud.revision_files(session, revision=revision) if f.path == filename), None)
    if entry is None:
        raise MissingEntry(f"{filename} not found in {owner}/{name}@{rev}", revision.sha)
    headers = {
        "X-Repo-Commit": revision.sha,
        "ETag": f'"{entry.sha256}"',
        "X-Linked-Etag": f'"{entry.sha256}"',
        "X-Linked-Size": str(entry.size),
        "Accept-Ranges": "bytes",
    }
    return adapter, entry, headers


class MissingEntry(EntryNotFoundError):
    """A file missing from a known revision; answered with ``X-Repo-Commit`` so
    the client caches the absence and does not ask again for that commit."""

    def __init__(self, message: str, commit: str) -> None:
        super().__init__(message)
        self.commit = commit

    def response(self, request: Request) -> Response:
        from peft_hub.hub.app import render_error

        response = render_error(request, self)
        response.headers["X-Repo-Commit"] = self.commit
        return response


@router.head("/{owner}/{name}/resolve/{rev}/{filename:path}")
def resolve_head(
    owner: str, name: str, rev: str, filename: str, request: Request, session: SessionDep, principal: HfPrincipalDep
) -> Response:
    """A file's metadata, answered here and never redirected.

    ``huggingface_hub`` reads the ETag, size and commit from this response; a
    redirect to S3 would leave it to sign a HEAD with a URL presigned for GET.
    """
    try:
        _, entry, headers = _locate(session, principal, owner, name, rev, filename)
    except MissingEntry as missing:
        return missing.response(request)
    return Response(status_code=200, headers={**headers, "Content-Length": str(entry.size)},
                    media_type="application/octet-stream")


@router.get("/{owner}/{name}/resolve/{rev}/{filename:path}")
def resolve_get(
    owner: str, name: str, rev: str, filename: str, request: Request,
    session: SessionDep, store: StoreDep, settings: SettingsDep, principal: HfPrincipalDep,
) -> Response:
    """A file's bytes: a 302 to a presigned URL on S3, else streamed with Range support.

    Fetching ``adapter_config.json`` counts one download of the adapter.
    """
    try:
        adapter, entry, headers = _locate(session, principal, owner, name, rev, filename)
    except MissingEntry as missing:
        return missing.response(request)
    if filename == CONFIG_NAME:
        crud.count_download(session, adapter=adapter)
    return blob_response(store, settings, entry.sha256, filename, headers)
