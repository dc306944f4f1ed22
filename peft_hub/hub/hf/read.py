"""Read side of the HF API: repo info, trees, refs, and ``/resolve`` downloads."""

from __future__ import annotations

import base64
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from peft_hub.adapter_files import CONFIG_NAME
from peft_hub.errors import (
    AdapterNotFoundError,
    EntryNotFoundError,
    InvalidInputError,
)
from peft_hub.hub import cache, crud, hot
from peft_hub.hub.auth import Principal, require_scope
from peft_hub.hub.crud import views
from peft_hub.hub.crud.views import RepoView
from peft_hub.hub.deps import SessionDep, SettingsDep
from peft_hub.hub.hf import shapes
from peft_hub.hub.hf.access import HfPrincipalDep, read_view
from peft_hub.hub.models import Adapter, Revision, RevisionFile
from peft_hub.hub.storage import BlobStore
from peft_hub.model_files import MODEL_CONFIG_NAME

router = APIRouter()

#: Tree page sizes, as on huggingface.co (fewer entries when expanded).
TREE_PAGE, TREE_PAGE_EXPANDED = 1000, 50
COMMITS_PAGE = 50


def _revision(session: Session, view: RepoView, rev: str) -> Revision | None:
    """A tag, a 40-hex id or a unique 7+-hex prefix (crud's resolver) -> the revision.

    None is the empty revision: ``main`` (or :data:`shapes.EMPTY_SHA`) of a
    repo created with ``create_repo`` and never pushed to. On huggingface.co
    an empty repo still has ``main``, and clients rely on it: 0.3x versions
    read ``repo_info(revision="main")`` before the first commit.
    """
    if rev in ("main", shapes.EMPTY_SHA) and "main" not in view.tags:
        return None
    return views.view_revision(session, view=view, rev=rev)


def _files(session: Session, revision: Revision | None) -> list[RevisionFile]:
    return list(views.files_of(session, revision=revision)) if revision is not None else []


def _pinned(rev: str, revision: Revision | None) -> bool:
    """Asked at a full revision id, so the answer's files can never change."""
    return revision is not None and rev == revision.sha


@router.get("/api/models/{owner}/{name}", response_model=dict[str, Any])
async def model_info(owner: str, name: str, request: Request, principal: HfPrincipalDep) -> Response:
    """Repo info at ``main``; a repo with no push yet is the empty revision, with no files."""
    return await _info(request, principal, owner, name, "main")


@router.get("/api/models/{owner}/{name}/revision/{rev}", response_model=dict[str, Any])
async def model_info_at(owner: str, name: str, rev: str, request: Request, principal: HfPrincipalDep) -> Response:
    """Repo info at a tag, a revision id or a unique prefix of one."""
    return await _info(request, principal, owner, name, rev)


async def _info(request: Request, principal: Principal | None, owner: str, name: str, rev: str) -> Response:
    """Repo info with an ETag; never ``immutable``, since it carries the download count.
    On the event loop when the caches hold the repo and its card (``hub.hot``)."""
    private, info = await hot.answer(request, _info_of, request.app.state.store, principal, owner, name, rev,
                                     store_slot=True)
    return cache.rendered_answer(request, info, private=private)


def _info_of(session: Session, store: BlobStore, principal: Principal | None, owner: str, name: str,
             rev: str) -> tuple[bool, cache.Rendered]:
    """(private, the repo info as sent), made once per cached view (``views.answer_of``)."""
    view = read_view(session, principal, owner, name)
    revision = _revision(session, view, rev)

    def info() -> dict[str, Any]:
        files = _files(session, revision)
        card = shapes.card_metadata(hot.store_for(session, store), files)  # the store only for an unparsed card
        return shapes.model_info(view.adapter, revision, files, card)

    key = ("info", None if revision is None else views.revision_state(revision))
    return view.adapter.private, views.answer_of(cache.of(session.get_bind()), view, key, info)


@router.get("/api/models/{owner}/{name}/tree/{rev}")
@router.get("/api/models/{owner}/{name}/tree/{rev}/{path:path}")
async def tree(
    owner: str, name: str, rev: str, request: Request, principal: HfPrincipalDep,
    path: str = "", recursive: bool = False, expand: bool = False,
    cursor: str | None = Query(None, max_length=64), limit: int | None = Query(None, ge=1, le=1000),
) -> Response:
    """The files of a revision, paged with a ``Link: <…>; rel="next"`` header.

    Adapters are flat, so ``recursive`` changes nothing and any ``path`` other
    than the root (or one file's own name) is missing. On the event loop when
    the caches hold the repo (``hub.hot``).
    """
    view, revision, files = await hot.answer(request, _tree_of, principal, owner, name, rev)
    wanted = path.strip("/")
    if wanted:
        files = [f for f in files if f.path == wanted]
        if not files:
            raise EntryNotFoundError(f"{path} not found in {owner}/{name}@{rev}")
    page = min(limit or TREE_PAGE, TREE_PAGE_EXPANDED if expand else TREE_PAGE)
    start = _decode_cursor(cursor)
    key = ("tree", None if revision is None else views.revision_state(revision), wanted, expand, start, page)
    items = views.answer_of(cache.of(request.app.state.engine), view, key, lambda: [
        shapes.tree_entry(f, revision if expand else None) for f in files[start: start + page]])
    answer = cache.rendered_answer(request, items, private=view.adapter.private, immutable=_pinned(rev, revision))
    if start + page < len(files):
        next_url = request.url.include_query_params(cursor=_encode_cursor(start + page))
        answer.headers["Link"] = f'<{next_url}>; rel="next"'
    return answer


def _tree_of(session: Session, principal: Principal | None, owner: str, name: str,
             rev: str) -> tuple[RepoView, Revision | None, list[RevisionFile]]:
    view = read_view(session, principal, owner, name)
    revision = _revision(session, view, rev)
    return view, revision, _files(session, revision)


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


@router.post("/api/models/{owner}/{name}/paths-info/{rev}", response_model=list[dict[str, Any]])
async def paths_info(owner: str, name: str, rev: str, request: Request, principal: HfPrincipalDep,
                     session: SessionDep) -> Response:
    """Tree entries for the listed paths (``HfApi.get_paths_info``); absent paths are left out."""
    form = await request.form()
    wanted = {p for p in form.getlist("paths") if isinstance(p, str)}  # an uploaded file names no path
    expand = str(form.get("expand", "")).lower() in ("1", "true")
    # The queries run in a worker thread, never on the event loop.
    view, revision, items = await anyio.to_thread.run_sync(
        _paths_info, session, principal, owner, name, rev, wanted, expand)
    return cache.json_answer(request, items, private=view.adapter.private, immutable=_pinned(rev, revision))


def _paths_info(session: Session, principal: Principal | None, owner: str, name: str, rev: str,
                wanted: set[str], expand: bool) -> tuple[RepoView, Revision | None, list[dict[str, Any]]]:
    view = read_view(session, principal, owner, name)
    revision = _revision(session, view, rev)
    items = [shapes.tree_entry(f, revision if expand else None) for f in _files(session, revision) if f.path in wanted]
    return view, revision, items


@router.get("/api/models/{owner}/{name}/refs", response_model=dict[str, Any])
async def refs(owner: str, name: str, request: Request, principal: HfPrincipalDep) -> Response:
    """``main`` as the branch, the other tags as git tags (on the event loop when cached)."""
    private, tags = await hot.answer(request, _tags_of, principal, owner, name)
    return cache.json_answer(request, shapes.refs(tags, empty="main" not in tags), private=private)


def _tags_of(session: Session, principal: Principal | None, owner: str, name: str) -> tuple[bool, dict[str, str]]:
    view = read_view(session, principal, owner, name)
    return view.adapter.private, view.tag_shas()


@router.get("/api/models/{owner}/{name}/commits/{rev}")
def commits(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, principal: HfPrincipalDep,
    p: int = Query(0, ge=0, le=10**6), limit: int = Query(COMMITS_PAGE, ge=1, le=COMMITS_PAGE),
) -> JSONResponse:
    """The revision history up to ``rev``, newest first, paged like the tree.

    peft-hub's history is linear (each push moves ``main``), so the history of
    a revision is it and every revision pushed before it.
    """
    view = read_view(session, principal, owner, name)
    adapter, revision = view.adapter, _revision(session, view, rev)
    history = [] if revision is None else crud.revision_history(session, adapter=adapter, revision=revision,
                                                                offset=p * limit, limit=limit + 1)
    headers = {}
    if len(history) > limit:
        headers["Link"] = f'<{request.url.include_query_params(p=p + 1, limit=limit)}>; rel="next"'
    return JSONResponse([shapes.commit_entry(r) for r in history[:limit]], headers=headers)


@router.get("/api/whoami-v2")
def whoami(principal: HfPrincipalDep) -> dict[str, Any]:
    """The caller, as ``HfApi.whoami`` reads it."""
    caller = require_scope(principal, "read")
    role = "read" if caller.scope == "read" else "write"
    return {
        "type": "user", "id": str(caller.user.id), "name": caller.user.name, "fullname": caller.user.name,
        "isPro": False, "orgs": [{"type": "org", "name": org} for org in sorted(caller.orgs)],
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
    view = read_view(session, principal, owner, name)
    adapter, revision = view.adapter, _revision(session, view, rev)
    if revision is None:
        # An empty repo's main is an empty tree: every file is missing. transformers'
        # push_to_hub relies on this when it looks for an existing model card.
        raise EntryNotFoundError(f"{filename} not found: {owner}/{name} has no files yet").annotate(
            headers={"X-Repo-Commit": shapes.EMPTY_SHA})
    files = views.files_of(session, revision=revision)
    entry: RevisionFile | None = next((f for f in files if f.path == filename), None)
    if entry is None:
        # With X-Repo-Commit, so the client caches the absence for that commit and does not ask again.
        raise EntryNotFoundError(f"{filename} not found in {owner}/{name}@{rev}").annotate(
            headers={"X-Repo-Commit": revision.sha})
    headers = {
        "X-Repo-Commit": revision.sha,
        "ETag": f'"{entry.sha256}"',
        "X-Linked-Etag": f'"{entry.sha256}"',
        "X-Linked-Size": str(entry.size),
        "Accept-Ranges": "bytes",
    }
    return adapter, entry, headers


@router.head("/{owner}/{name}/resolve/{rev}/{filename:path}")
async def resolve_head(
    owner: str, name: str, rev: str, filename: str, request: Request, principal: HfPrincipalDep
) -> Response:
    """A file's metadata, answered here and never redirected.

    ``huggingface_hub`` reads the ETag, size and commit from this response; a
    redirect to S3 would leave it to sign a HEAD with a URL presigned for GET.
    Answered on the event loop when the caches hold the repo (``hub.hot``).
    """
    _, entry, headers = await hot.answer(request, _locate, principal, owner, name, rev, filename)
    return Response(status_code=200, headers={**headers, "Content-Length": str(entry.size)},
                    media_type="application/octet-stream")


@router.get("/{owner}/{name}/resolve/{rev}/{filename:path}")
async def resolve_get(
    owner: str, name: str, rev: str, filename: str, request: Request, settings: SettingsDep,
    principal: HfPrincipalDep,
) -> Response:
    """A file's bytes: a 302 to a presigned URL on S3, else streamed with Range support.

    Fetching ``adapter_config.json`` (a model's ``config.json``) counts one
    download of the repo. Answered on the event loop when the caches hold the
    repo and no download is counted (``hub.hot``).
    """
    adapter, entry, headers = await hot.answer(request, _counted, principal, owner, name, rev, filename)
    return await hot.send_blob(request, settings, entry.sha256, filename, headers, private=adapter.private,
                           pinned=rev == headers["X-Repo-Commit"])


def _counted(
    session: Session, principal: Principal | None, owner: str, name: str, rev: str, filename: str
) -> tuple[Adapter, RevisionFile, dict[str, str]]:
    """:func:`_locate`, counting a download for the repo's config file."""
    adapter, entry, headers = _locate(session, principal, owner, name, rev, filename)
    if filename == (CONFIG_NAME if adapter.kind != "model" else MODEL_CONFIG_NAME):
        crud.count_download(session, adapter=adapter)
    return adapter, entry, headers
