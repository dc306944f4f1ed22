"""The native adapter API under ``/api/adapters``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from peft_hub.contract import CommitResult, SearchPage
from peft_hub.errors import EntryNotFoundError
from peft_hub.hub import audit, cache, crud, hot, possession
from peft_hub.hub.auth import Principal, require_write
from peft_hub.hub.crud import views
from peft_hub.hub.deps import ClientDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from peft_hub.hub.models import Adapter, RevisionFile
from peft_hub.hub.publish import publish
from peft_hub.hub.routes import uploads
from peft_hub.hub.schemas import (
    CommitRequest,
    EvalsRequest,
    TagRequest,
)
from peft_hub.modelcard import CARD_NAME
from peft_hub.names import check_file_name, check_no_twins, validate_repo_id

router = APIRouter(prefix="/api/adapters", tags=["adapters"])

MAX_INT32 = 2**31 - 1
#: Deep pages cost an OFFSET scan; nobody reads page 10,001 of a search.
MAX_PAGE = 10_000


def _load(session: SessionDep, principal: PrincipalDep, owner: str, name: str) -> Adapter:
    owner, name = validate_repo_id(f"{owner}/{name}")
    return crud.get_adapter(session, owner=owner, name=name, principal=principal)


@router.get("")
def search(
    session: SessionDep,
    principal: PrincipalDep,
    q: str | None = Query(None, max_length=200),
    base_model: str | None = Query(None, max_length=300),
    method: str | None = Query(None, max_length=32),
    min_rank: int | None = Query(None, ge=0, le=MAX_INT32),
    max_rank: int | None = Query(None, ge=0, le=MAX_INT32),
    target_module: str | None = Query(None, max_length=128),
    owner: str | None = Query(None, max_length=64),
    tag: str | None = Query(None, max_length=64),
    kind: Literal["adapter", "model"] | None = Query(None),
    sort: str = Query("updated", max_length=16),
    order: str = Query("desc", max_length=4),
    page: int = Query(1, ge=1, le=MAX_PAGE),
    per_page: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    """Search adapters with a text query and filters; sorted and paginated."""
    clauses = crud.search_filters(
        principal=principal, q=q, base_model=base_model, method=method, min_rank=min_rank,
        max_rank=max_rank, target_module=target_module, owner=owner, tag=tag, kind=kind,
    )
    found = crud.search_adapters(session, clauses=clauses, sort=sort, order=order, page=page, per_page=per_page)
    return SearchPage(items=[crud.adapter_summary(a) for a in found.items], total=found.total,
                      total_exact=found.exact, page=page, per_page=per_page).model_dump()


@router.get("/{owner}/{name}", response_model=dict[str, Any])
async def show(
    owner: str, name: str, request: Request, principal: PrincipalDep,
    revision: str = Query("main", max_length=64), download: bool = False,
) -> Response:
    """An adapter at a revision (a tag or a 40-hex id): metadata, files, tags.

    ``download=true`` counts a download: clients set it when they pull. On
    the event loop when the caches hold the repo and nothing is counted (``hub.hot``).
    """
    private, detail = await hot.answer(request, _detail, principal, owner, name, revision, download)
    return cache.rendered_answer(request, detail, private=private)


def _detail(session: Any, principal: Principal | None, owner: str, name: str, revision: str,
            download: bool) -> tuple[bool, cache.Rendered]:
    """(private, the revision's detail as sent) for ``show``, if the caller may read it;
    made once per cached view, unless it counts a download or names parents (whose
    visibility is the caller's)."""
    owner, name = validate_repo_id(f"{owner}/{name}")
    view = views.read_repo(session, owner=owner, name=name, principal=principal)
    rev = views.view_revision(session, view=view, rev=revision)
    if download:
        crud.count_download(session, adapter=view.adapter)

    def detail() -> dict[str, Any]:
        return crud.revision_detail(session, adapter=view.adapter, revision=rev, principal=principal,
                                    tags=view.tag_shas(), files=views.files_of(session, revision=rev)).model_dump()

    if download or views.names_parents(rev):
        return view.adapter.private, cache.render(detail())
    key = ("show", views.revision_state(rev))
    return view.adapter.private, views.answer_of(cache.of(session.get_bind()), view, key, detail)


@router.get("/{owner}/{name}/revisions")
def revisions(owner: str, name: str, session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    adapter = _load(session, principal, owner, name)
    return [
        {"revision": r.sha, "message": r.message, "author": r.author, "created_at": r.created_at.isoformat()}
        for r in crud.list_revisions(session, adapter=adapter)
    ]


@router.post("/{owner}/{name}/preupload")
def preupload(
    owner: str, name: str, body: uploads.UploadPreuploadRequest, session: SessionDep, store: StoreDep,
    settings: SettingsDep, principal: PrincipalDep, request: Request,
) -> dict[str, Any]:
    """Say which blobs to upload, and where: every blob the caller has not
    proved it holds, whether or not the store has it (no existence oracle).
    A large blob on S3 gets a multipart plan (see :mod:`.uploads`). The
    answer also says whether the repo is private now (null: there is none),
    which a client keeps when its commit would otherwise re-create the repo
    public after a delete that ran during the upload (the caller may write
    to the namespace, so it may see its repos)."""
    owner, name = validate_repo_id(f"{owner}/{name}")
    principal = require_write(principal, owner)
    existing = crud.find_adapter(session, owner=owner, name=name)
    entries = [f.entry() for f in body.files]
    for entry in entries:  # the commit's own rule, before any byte is sent (the commit checks the list again)
        check_file_name(entry.path)
    check_no_twins(e.path for e in entries)
    have = possession.stored_and_held(
        session, store, principal, entries, lease_seconds=settings.upload_lease_seconds)
    key = uploads.signing_key(request.app.state, settings)
    out: list[dict[str, Any]] = []
    for spec, entry in zip(body.files, entries, strict=True):
        if entry.sha256 in have or any(u["sha256"] == entry.sha256 for u in out):
            continue
        multipart = uploads.plan(store, settings, key, str(principal.user.id), entry, spec.multipart)
        if multipart is not None:
            out.append({"path": entry.path, "sha256": entry.sha256, "multipart": multipart})
            continue
        target = store.upload_target(entry.sha256, entry.size, settings.presign_expiry, uploader=str(principal.user.id))
        if target is None:
            url = str(request.url_for("upload_blob", sha256=entry.sha256)) + f"?size={entry.size}"
            out.append({"path": entry.path, "sha256": entry.sha256, "url": url, "method": "PUT", "headers": {},
                        "auth": True})
        else:
            out.append({"path": entry.path, "sha256": entry.sha256, "url": target.url, "method": target.method,
                            "headers": target.headers or {}, "auth": False})
    return {"uploads": out, "private": None if existing is None else existing.private}


@router.post("/{owner}/{name}/uploads/complete")
def complete_upload(
    owner: str, name: str, body: uploads.CompleteRequest, store: StoreDep, settings: SettingsDep,
    principal: PrincipalDep, request: Request,
) -> dict[str, Any]:
    """Finish the caller's multipart upload of a blob planned by preupload."""
    owner, name = validate_repo_id(f"{owner}/{name}")
    principal = require_write(principal, owner)
    key = uploads.signing_key(request.app.state, settings)
    return uploads.complete(store, key, str(principal.user.id), body, engine=request.app.state.engine)


@router.post("/{owner}/{name}/commit", status_code=201)
def commit(
    owner: str, name: str, body: CommitRequest, session: SessionDep, store: StoreDep, principal: PrincipalDep,
    client: ClientDep,
) -> dict[str, Any]:
    """Publish the uploaded blobs as a new revision, atomically (publish checks write access)."""
    adapter, revision, created = publish(
        session, store, principal=principal, repo_id=f"{owner}/{name}", entries=[f.entry() for f in body.files],
        message=body.message, tags=body.tags, private=body.private, client=client,
    )
    detail = crud.revision_detail(session, adapter=adapter, revision=revision, principal=principal)
    return CommitResult(**detail.model_dump(), created=created).model_dump()


@router.get("/{owner}/{name}/resolve/{revision}/{path}")
async def resolve(
    owner: str, name: str, revision: str, path: str, request: Request, settings: SettingsDep,
    principal: PrincipalDep,
) -> Response:
    """A file's bytes: a redirect to S3, or streamed with Range support (on
    the event loop when the caches hold the repo, see ``hub.hot``)."""
    private, sha, entry = await hot.answer(request, _entry, principal, owner, name, revision, path)
    headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.sha256}"'}
    return await hot.send_blob(request, settings, entry.sha256, path, headers, private=private,
                               pinned=revision == sha)


def _entry(session: Any, principal: Principal | None, owner: str, name: str, revision: str,
           path: str) -> tuple[bool, str, RevisionFile]:
    """(private, revision sha, file) for a resolve, if the caller may read it."""
    owner, name = validate_repo_id(f"{owner}/{name}")
    view = views.read_repo(session, owner=owner, name=name, principal=principal)
    rev = views.view_revision(session, view=view, rev=revision)
    entry = next((f for f in views.files_of(session, revision=rev) if f.path == path), None)
    if entry is None:
        raise EntryNotFoundError(f"{path} not found in {owner}/{name}@{revision}")
    return view.adapter.private, rev.sha, entry


@router.get("/{owner}/{name}/card")
def card(
    owner: str, name: str, session: SessionDep, store: StoreDep, principal: PrincipalDep,
    revision: str = Query("main", max_length=64),
) -> Response:
    """The model card (README.md) as Markdown text."""
    adapter = _load(session, principal, owner, name)
    rev = crud.resolve_revision(session, adapter=adapter, rev=revision)
    entry = next((f for f in crud.revision_files(session, revision=rev) if f.path == CARD_NAME), None)
    if entry is None:
        raise EntryNotFoundError(f"{owner}/{name}@{revision} has no model card")
    with store.open(entry.sha256) as fh:
        return Response(fh.read(), media_type="text/markdown; charset=utf-8")


@router.put("/{owner}/{name}/tags/{tag}")
def put_tag(
    owner: str, name: str, tag: str, body: TagRequest, session: SessionDep, principal: PrincipalDep, client: ClientDep
) -> dict[str, str]:
    adapter = _load(session, principal, owner, name)
    principal = require_write(principal, adapter.owner)
    crud.validate_tag(tag)
    revision = crud.resolve_revision(session, adapter=adapter, rev=body.revision)
    crud.set_tag(session, adapter=adapter, tag=tag, revision=revision)
    audit.record(session, actor=principal.user.name, action="tag.move", target=f"{adapter.owner}/{adapter.name}:{tag}",
                 client=client, detail={"revision": revision.sha})
    return {"tag": tag, "revision": revision.sha}


@router.delete("/{owner}/{name}/tags/{tag}", status_code=204)
def delete_tag(
    owner: str, name: str, tag: str, session: SessionDep, principal: PrincipalDep, client: ClientDep
) -> Response:
    adapter = _load(session, principal, owner, name)
    principal = require_write(principal, adapter.owner)
    crud.delete_tag(session, adapter=adapter, tag=tag)
    audit.record(session, actor=principal.user.name, action="tag.delete",
                 target=f"{adapter.owner}/{adapter.name}:{tag}", client=client)
    return Response(status_code=204)


@router.delete("/{owner}/{name}", status_code=204)
def delete(owner: str, name: str, session: SessionDep, principal: PrincipalDep, client: ClientDep) -> Response:
    """Delete an adapter; its blobs are removed by the next gc."""
    adapter = _load(session, principal, owner, name)
    principal = require_write(principal, adapter.owner)
    crud.delete_adapter(session, adapter=adapter)
    audit.record(session, actor=principal.user.name, action="adapter.delete",
                 target=f"{adapter.owner}/{adapter.name}", client=client)
    return Response(status_code=204)


@router.post("/{owner}/{name}/evals", status_code=201)
def add_evals(
    owner: str, name: str, body: EvalsRequest, session: SessionDep, principal: PrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Attach eval results to a revision (needs write access to the adapter's namespace)."""
    adapter = _load(session, principal, owner, name)
    principal = require_write(principal, adapter.owner)
    revision = crud.resolve_revision(session, adapter=adapter, rev=body.revision)
    evals = [e.model_dump() for e in body.evals]
    rows = crud.add_evals(session, adapter=adapter, revision=revision, evals=evals,
                          added_by=principal.user.name)
    audit.record(session, actor=principal.user.name, action="eval.add",
                 target=f"{adapter.owner}/{adapter.name}@{revision.sha}", client=client, detail={"evals": len(rows)})
    return {"revision": revision.sha, "added": len(rows)}


@router.get("/{owner}/{name}/evals")
def list_evals(owner: str, name: str, session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    adapter = _load(session, principal, owner, name)
    return [
        {**e.model_dump(exclude={"revision_id"}), "revision": sha, "created_at": e.created_at.isoformat()}
        for e, sha in crud.list_evals(session, adapter=adapter)
    ]


@router.delete("/{owner}/{name}/evals/{eval_id}", status_code=204)
def delete_eval(
    owner: str, name: str, eval_id: Annotated[int, Path(ge=1, le=2**62)], session: SessionDep, principal: PrincipalDep,
    client: ClientDep,
) -> Response:
    """Remove one eval result (the adapter's owners only)."""
    adapter = _load(session, principal, owner, name)
    principal = require_write(principal, adapter.owner)
    crud.delete_eval(session, adapter=adapter, eval_id=eval_id)
    audit.record(session, actor=principal.user.name, action="eval.delete",
                 target=f"{adapter.owner}/{adapter.name}", client=client, detail={"eval": eval_id})
    return Response(status_code=204)


@router.get("/{owner}/{name}/lineage")
def lineage(
    owner: str, name: str, session: SessionDep, principal: PrincipalDep, revision: str = Query("main", max_length=64)
) -> dict[str, Any]:
    """Parents (with weights and method) of a revision, and children of the adapter."""
    adapter = _load(session, principal, owner, name)
    rev = crud.resolve_revision(session, adapter=adapter, rev=revision)
    out = crud.lineage(session, adapter=adapter, revision=rev, principal=principal)
    return {"id": f"{adapter.owner}/{adapter.name}", "revision": rev.sha, **out}
