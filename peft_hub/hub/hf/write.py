"""Write side of the HF API: create a repo, preupload, LFS batch and upload, commit.

``PeftModel.push_to_hub``, ``HfApi.upload_folder``/``create_commit`` and
``hf upload`` drive these in turn; every commit ends in the same
:func:`~peft_hub.hub.publish.publish` as ``peft-hub push``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import WEIGHTS_MAX_BYTES, size_cap
from peft_hub.errors import (
    AdapterNotFoundError,
    ConflictError,
    InvalidAdapterError,
    InvalidInputError,
    NotImplementedByHubError,
)
from peft_hub.hub import audit, crud, possession
from peft_hub.hub.auth import Principal, require_write
from peft_hub.hub.deps import ClientDep, SessionDep, SettingsDep, StoreDep
from peft_hub.hub.hf import blobs
from peft_hub.hub.hf.access import HfPrincipalDep, load_adapter
from peft_hub.hub.hf.commit import (
    IGNORED_FILES,
    ParsedCommit,
    apply_operations,
    check_path,
    gitignore_matcher,
    read_commit,
    upload_mode,
)
from peft_hub.hub.hf.shapes import EMPTY_SHA, split_front_matter
from peft_hub.hub.models import Adapter
from peft_hub.hub.publish import publish
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import receive
from peft_hub.names import validate_namespace
from peft_hub.safeparse import load_yaml, loads_json

router = APIRouter()

#: Objects one LFS batch request may name (an adapter has far fewer files).
MAX_LFS_OBJECTS = 256

XET_HINT = (
    "peft-hub does not speak the Xet protocol. Set HF_HUB_DISABLE_XET=1 so huggingface_hub uploads "
    "files larger than the inline limit through Git LFS instead"
)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _writable(session: Session, principal: Principal | None, owner: str, name: str) -> Adapter:
    """An existing adapter the caller may write to (a missing one is RepoNotFound)."""
    adapter = load_adapter(session, principal, owner, name)
    require_write(principal, adapter.owner)
    return adapter


def _main_only(rev: str, create_pr: str | None) -> None:
    if create_pr not in (None, "", "0", "false"):
        raise InvalidInputError("peft-hub has no pull requests: commit to 'main'")
    if rev != "main":
        raise InvalidInputError(
            f"peft-hub has no branches: commit to 'main' (got {rev!r}); tag a revision with `peft-hub tag` instead"
        )


# --- repositories ------------------------------------------------------------


@router.post("/api/repos/create")
async def create_repo(request: Request, session: SessionDep, principal: HfPrincipalDep) -> JSONResponse:
    """Create an empty adapter repo.

    An existing one is a 409 that still carries ``url``: ``create_repo(exist_ok=True)``
    reads it from the error body.
    """
    body = await json_object(request)
    if body.get("type") not in (None, "model"):
        raise InvalidInputError("peft-hub stores model repos (adapters) only")
    owner = body.get("organization") or (principal.user.name if principal else "")
    name = str(body.get("name") or "")
    require_write(principal, owner)
    validate_namespace(owner, what="owner")
    validate_namespace(name)
    visibility = body.get("visibility")
    private = visibility == "private" if visibility is not None else bool(body.get("private"))
    created = {"url": f"{_base(request)}/{owner}/{name}", "name": f"{owner}/{name}", "id": f"{owner}/{name}"}
    try:
        await run_in_threadpool(crud.create_adapter, session, owner=owner, name=name, private=private)
    except ConflictError as exc:
        raise exc.annotate(extra=created) from None
    return JSONResponse(created)


@router.delete("/api/repos/delete")
async def delete_repo(request: Request, session: SessionDep, principal: HfPrincipalDep, client: ClientDep) -> dict[str, Any]:
    """Delete an adapter and its revisions (blobs go at the next gc)."""
    body = await json_object(request)
    owner = body.get("organization") or (principal.user.name if principal else "")
    await run_in_threadpool(_delete, session, principal, str(owner), str(body.get("name") or ""), client)
    return {}


def _delete(session: Session, principal: Principal | None, owner: str, name: str, client: str) -> None:
    adapter = _writable(session, principal, owner, name)
    crud.delete_adapter(session, adapter=adapter)
    audit.record(session, actor=principal.user.name, action="adapter.delete",
                 target=f"{adapter.owner}/{adapter.name}", client=client)


async def json_object(request: Request) -> dict[str, Any]:
    body = loads_json(await request.body(), what="the body", strict_strings=True)
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    return body


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    """Check a model card's YAML front matter before a commit uploads anything."""
    body = await json_object(request)
    content = body.get("content")
    front = split_front_matter(content if isinstance(content, str) else "")
    if front is not None:
        try:  # bounded: an alias bomb or a deep nest is an error, not a hang
            data = load_yaml(front, what="the YAML front matter")
        except InvalidInputError as exc:
            raise YamlRefused(exc.message) from None
        if data is not None and not isinstance(data, dict):
            raise YamlRefused("the metadata must be a YAML mapping")
    return JSONResponse({"errors": [], "warnings": []})


class YamlRefused(InvalidInputError):
    """HF's answer to bad front matter: a 400 with ``errors`` (which huggingface_hub shows)."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.annotate(extra={"errors": [{"message": message}], "warnings": []})


# --- uploads -----------------------------------------------------------------


@router.post("/api/models/{owner}/{name}/preupload/{rev}")
async def preupload(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, principal: HfPrincipalDep,
    create_pr: str | None = None,
) -> dict[str, Any]:
    """Say how each file travels: inline up to the inline limit, else LFS.

    A name the registry refuses (a pickle, a subfolder) fails here, before
    any bytes are sent. ``oid`` is the stored sha256 for LFS files, so an
    unchanged one is not sent again.
    """
    _main_only(rev, create_pr)
    body = await json_object(request)
    ignored = gitignore_matcher(body.get("gitIgnore"))
    return await run_in_threadpool(_upload_plan, session, principal, owner, name, body.get("files") or [], ignored)


def _upload_plan(
    session: Session, principal: Principal | None, owner: str, name: str, files: list[Any],
    ignored: Callable[[str], bool],
) -> dict[str, Any]:
    adapter = _writable(session, principal, owner, name)
    if not isinstance(files, list) or len(files) > MAX_LFS_OBJECTS:
        raise InvalidInputError(f"'files' must be a list of at most {MAX_LFS_OBJECTS} files")
    parent = _parent_files(session, adapter)
    out = []
    for spec in files:
        path, size = (spec.get("path"), spec.get("size")) if isinstance(spec, dict) else (None, None)
        if isinstance(path, str) and (path in IGNORED_FILES or ignored(path)):
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": True, "oid": None})
            continue
        check_path(path)
        if not isinstance(size, int) or size < 0:
            raise InvalidInputError(f"{path}: 'size' must be a non-negative integer")
        if size > size_cap(path):
            raise InvalidAdapterError(f"{path} is {size} bytes, above the {size_cap(path)} byte cap")
        mode = upload_mode(size)
        known = parent.get(path)
        oid = known.sha256 if mode == "lfs" and known is not None else None
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return {"files": out}


def _parent_files(session: Session, adapter: Adapter) -> dict[str, FileEntry]:
    tags = crud.tags_of(session, adapter=adapter)
    if "main" not in tags:
        return {}
    revision = crud.resolve_revision(session, adapter=adapter, rev="main")
    return {f.path: FileEntry(f.path, f.size, f.sha256) for f in crud.revision_files(session, revision=revision)}


@router.post("/{owner}/{repo}/info/lfs/objects/batch")
async def lfs_batch(
    owner: str, repo: str, request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep,
    principal: HfPrincipalDep,
) -> JSONResponse:
    """The Git LFS batch API, upload only, basic transfer: a signed PUT URL on
    the hub for each blob the store lacks, nothing for those it has."""
    if not repo.endswith(".git"):
        raise AdapterNotFoundError(f"repository {owner}/{repo} not found")
    body = await json_object(request)
    if body.get("operation") != "upload":
        raise InvalidInputError("this LFS endpoint takes uploads; download files through /resolve")
    await run_in_threadpool(_writable, session, principal, owner, repo[: -len(".git")])
    items = body.get("objects") or []
    if not isinstance(items, list) or len(items) > MAX_LFS_OBJECTS:
        raise InvalidInputError(f"'objects' must be a list of at most {MAX_LFS_OBJECTS} objects")
    key = blobs.signing_key(request.app.state, settings)
    expires = int(time.time()) + settings.presign_expiry
    valid = [FileEntry(str(o["oid"]), o["size"], o["oid"]) for o in items
             if isinstance(o, dict) and not _lfs_problem(o.get("oid"), o.get("size"))]
    # Only blobs the caller holds count as present: no existence oracle.
    have = await run_in_threadpool(_plan_uploads, session, store, principal, valid, settings.upload_lease_seconds)
    objects = []
    for obj in items:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        item: dict[str, Any] = {"oid": str(oid)[:64], "size": size if isinstance(size, int) else 0}
        problem = _lfs_problem(oid, size)
        if problem:
            item["error"] = {"code": 422, "message": problem}
        else:
            if oid not in have:
                signature = blobs.sign(key, oid, size, expires, principal.user.id)
                query = urlencode({"size": size, "expires": expires, "user": principal.user.id, "signature": signature})
                href = str(request.url_for("hf_lfs_upload", sha256=oid)) + "?" + query
                item["actions"] = {"upload": {"href": href, "expires_in": settings.presign_expiry}}
            item["authenticated"] = True
        objects.append(item)
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        media_type="application/vnd.git-lfs+json")


def _plan_uploads(session: Session, store: BlobStore, principal: Principal, entries: list[FileEntry], lease: int) -> set[str]:
    return possession.stored_and_held(session, store, principal, entries, lease_seconds=lease)


def _lfs_problem(oid: Any, size: Any) -> str | None:
    if not isinstance(oid, str) or len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
        return "oid must be a sha256 in 64 lowercase hex digits"
    if not isinstance(size, int) or size < 0:
        return "size must be a non-negative integer"
    if size > WEIGHTS_MAX_BYTES:
        return f"{size} bytes is above the {WEIGHTS_MAX_BYTES} byte cap"
    return None


@router.put("/api/hf/lfs/{sha256}", name="hf_lfs_upload")
async def lfs_upload(
    sha256: str, request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep,
    size: int = Query(ge=0, le=WEIGHTS_MAX_BYTES), expires: int = Query(ge=0, le=2**62), user: int = Query(ge=0, le=2**62),
    signature: str = Query(max_length=128),
) -> dict[str, Any]:
    """Receive one LFS object at a URL the batch endpoint signed; its bytes
    are checked against the sha256 and size before they are kept, and the
    user the URL was issued to gets the upload receipt."""
    blobs.check_signature(blobs.signing_key(request.app.state, settings), sha256, size, expires, user, signature)
    await receive(store, sha256, size, request.stream())
    await run_in_threadpool(possession.record_upload, session, store, user_id=user, sha256=sha256, size=size)
    return {"oid": sha256, "size": size}


@router.get("/api/models/{owner}/{name}/xet-write-token/{rev}")
@router.get("/api/models/{owner}/{name}/xet-read-token/{rev}")
def xet_token(owner: str, name: str, rev: str) -> None:
    """Xet is not offered: say so plainly instead of a bare 404."""
    raise NotImplementedByHubError(XET_HINT)


# --- commit ------------------------------------------------------------------


def _plan_commit(engine: Engine, principal: Principal | None, owner: str, name: str) -> Adapter:
    with Session(engine, expire_on_commit=False) as session:
        return _writable(session, principal, owner, name)


def _entries(engine: Engine, principal: Principal, adapter: Adapter, parsed: ParsedCommit) -> tuple[list[FileEntry], str | None]:
    """The commit's operations applied to ``main`` as it is now (read in a
    short session); publishing re-reads ``main`` under a row lock and refuses
    if another commit moved it since."""
    with Session(engine) as session:
        for op in parsed.operations:
            if op.kind == "add" and op.entry.size is None:  # an lfsFile line without a size
                size = possession.size_for(session, principal, op.entry.sha256, op.path)
                op.entry = FileEntry(op.path, size, op.entry.sha256)
        parent = _parent_files(session, adapter)
        current = crud.tags_of(session, adapter=adapter).get("main")
    if parsed.parent_commit and parsed.parent_commit != (current or EMPTY_SHA):
        raise ConflictError(f"main is at {current}, not at the parent commit {parsed.parent_commit}")
    return apply_operations(list(parent.values()), parsed.operations), current


@router.post("/api/models/{owner}/{name}/commit/{rev}")
async def commit(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, store: StoreDep,
    principal: HfPrincipalDep, client: ClientDep, create_pr: str | None = None,
) -> dict[str, Any]:
    """Apply an NDJSON commit on top of ``main`` and publish the result whole.

    No transaction is open while the body streams in: the checks before it
    and the reads after it are short sessions, and ``session`` (the write
    transaction) is used by the publish alone.
    """
    _main_only(rev, create_pr)
    engine = request.app.state.engine
    adapter = await run_in_threadpool(_plan_commit, engine, principal, owner, name)
    stored: list[str] = []
    try:
        parsed = await read_commit(request.stream(), store, stored)
        entries, current = await run_in_threadpool(_entries, engine, principal, adapter, parsed)
        received = frozenset(op.entry.sha256 for op in parsed.operations if op.kind == "add" and op.inline)
        adapter, revision, created = await run_in_threadpool(partial(
            publish, session, store, principal=principal, repo_id=f"{adapter.owner}/{adapter.name}", entries=entries,
            message=parsed.message, parent=current, client=client, received=received))
    except BaseException:
        # A refused commit leaves the store as it found it. Roll back first:
        # the discard locks the blobs' rows in a transaction of its own.
        await run_in_threadpool(session.rollback)
        await run_in_threadpool(possession.discard_unclaimed, engine, store, stored)
        raise
    base = _base(request)
    return {
        "success": True, "commitOid": revision.sha, "commitUrl": f"{base}/{adapter.owner}/{adapter.name}/commit/{revision.sha}",
        "hookOutput": "", "pullRequestUrl": None, "created": created,
    }
