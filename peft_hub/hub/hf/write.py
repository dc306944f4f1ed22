"""Write side of the HF API: create and delete a repo, check a card's YAML, commit.

``PeftModel.push_to_hub``, ``HfApi.upload_folder``/``create_commit`` and
``hf upload`` drive these in turn; every commit ends in the same
:func:`~peft_hub.hub.publish.publish` as ``peft-hub push``. The uploads
before a commit (preupload, Git LFS) are :mod:`peft_hub.hub.hf.lfs`'s.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import FileEntry
from peft_hub.errors import ConflictError, InvalidInputError, RevisionNotFoundError
from peft_hub.hub import audit, crud, possession
from peft_hub.hub.auth import Principal, require_write
from peft_hub.hub.deps import ClientDep, SessionDep, StoreDep
from peft_hub.hub.hf.access import HfPrincipalDep, load_adapter
from peft_hub.hub.hf.commit import MAX_COMMIT_FILES, read_commit
from peft_hub.hub.hf.operations import ParsedCommit, apply_operations
from peft_hub.hub.hf.shapes import EMPTY_SHA, split_front_matter
from peft_hub.hub.models import Adapter
from peft_hub.hub.publish import publish
from peft_hub.names import validate_namespace
from peft_hub.safeparse import load_yaml, loads_json

router = APIRouter()


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def writable(session: Session, principal: Principal | None, owner: str, name: str) -> tuple[Adapter, Principal]:
    """An existing adapter the caller may write to (a missing one is RepoNotFound), and the caller."""
    adapter = load_adapter(session, principal, owner, name)
    return adapter, require_write(principal, adapter.owner)


def main_only(rev: str, create_pr: str | None) -> None:
    if create_pr not in (None, "", "0", "false"):
        raise InvalidInputError("peft-hub has no pull requests: commit to 'main'")
    if rev != "main":
        raise InvalidInputError(
            f"peft-hub has no branches: commit to 'main' (got {rev!r}); tag a revision with `peft-hub tag` instead"
        )


def parent_files(session: Session, adapter: Adapter) -> tuple[dict[str, FileEntry], str | None]:
    """``main``'s files and its revision id (None for an empty repo), both
    from the one revision ``main`` is read at: a commit landing meanwhile
    moves ``main`` past that id, and the publish refuses this one (409)."""
    try:
        revision = crud.resolve_revision(session, adapter=adapter, rev="main")
    except RevisionNotFoundError:
        return {}, None
    files = crud.revision_files(session, revision=revision)
    return {f.path: FileEntry(f.path, f.size, f.sha256) for f in files}, revision.sha


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
    repo_id = f"{owner}/{name}"
    created: dict[str, object] = {"url": f"{_base(request)}/{repo_id}", "name": repo_id, "id": repo_id}
    try:
        await run_in_threadpool(crud.create_adapter, session, owner=owner, name=name, private=private)
    except ConflictError as exc:
        raise exc.annotate(extra=created) from None
    return JSONResponse(created)


@router.delete("/api/repos/delete")
async def delete_repo(
    request: Request, session: SessionDep, principal: HfPrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Delete an adapter and its revisions (blobs go at the next gc)."""
    body = await json_object(request)
    owner = body.get("organization") or (principal.user.name if principal else "")
    await run_in_threadpool(_delete, session, principal, str(owner), str(body.get("name") or ""), client)
    return {}


def _delete(session: Session, principal: Principal | None, owner: str, name: str, client: str) -> None:
    adapter, writer = writable(session, principal, owner, name)
    crud.delete_adapter(session, adapter=adapter)
    audit.record(session, actor=writer.user.name, action="adapter.delete",
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
            raise YamlRefusedError(exc.message) from None
        if data is not None and not isinstance(data, dict):
            raise YamlRefusedError("the metadata must be a YAML mapping")
    return JSONResponse({"errors": [], "warnings": []})


class YamlRefusedError(InvalidInputError):
    """HF's answer to bad front matter: a 400 with ``errors`` (which huggingface_hub shows)."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.annotate(extra={"errors": [{"message": message}], "warnings": []})


# --- commit ------------------------------------------------------------------


def _plan_commit(engine: Engine, principal: Principal | None, owner: str, name: str) -> tuple[Adapter, Principal]:
    with Session(engine, expire_on_commit=False) as session:
        return writable(session, principal, owner, name)


def _entries(
    engine: Engine, principal: Principal, adapter: Adapter, parsed: ParsedCommit
) -> tuple[list[FileEntry], str | None]:
    """The commit's operations applied to ``main`` as it is now (read in a
    short session); publishing re-reads ``main`` under a row lock and refuses
    if another commit moved it since."""
    with Session(engine) as session:
        for op in parsed.operations:
            if op.kind == "add" and op.added.size is None:  # an lfsFile line without a size
                size = possession.size_for(session, principal, op.added.sha256, op.path)
                op.entry = FileEntry(op.path, size, op.added.sha256)
        parent, current = parent_files(session, adapter)
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
    main_only(rev, create_pr)
    engine = request.app.state.engine
    adapter, writer = await run_in_threadpool(_plan_commit, engine, principal, owner, name)
    stored: list[str] = []
    try:
        parsed = await read_commit(request.stream(), store, stored, max_files=MAX_COMMIT_FILES)
        entries, current = await run_in_threadpool(_entries, engine, writer, adapter, parsed)
        received = frozenset(op.added.sha256 for op in parsed.operations if op.kind == "add" and op.inline)
        adapter, revision, created = await run_in_threadpool(partial(
            publish, session, store, principal=writer, repo_id=f"{adapter.owner}/{adapter.name}", entries=entries,
            message=parsed.message, parent=current, client=client, received=received, adapter_id=adapter.id))
    except BaseException:
        # A refused commit leaves the store as it found it. Roll back first:
        # the discard locks the blobs' rows in a transaction of its own.
        await run_in_threadpool(session.rollback)
        await run_in_threadpool(possession.discard_unclaimed, engine, store, stored)
        raise
    base = _base(request)
    return {
        "success": True, "commitOid": revision.sha,
        "commitUrl": f"{base}/{adapter.owner}/{adapter.name}/commit/{revision.sha}",
        "hookOutput": "", "pullRequestUrl": None, "created": created,
    }
