"""Uploads from HF tools: ``preupload`` (how each file travels), the Git LFS
batch API and the signed URL it hands out, and the Xet token endpoints that
say Xet is not offered.

The commit that names the uploaded files is :mod:`peft_hub.hub.hf.write`'s.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable
from typing import Any, TypeGuard
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import WEIGHTS_MAX_BYTES, size_cap
from peft_hub.errors import AdapterNotFoundError, InvalidAdapterError, InvalidInputError, NotImplementedByHubError
from peft_hub.hub import possession
from peft_hub.hub.auth import Principal
from peft_hub.hub.deps import SessionDep, SettingsDep, StoreDep
from peft_hub.hub.hf import blobs
from peft_hub.hub.hf.access import HfPrincipalDep
from peft_hub.hub.hf.commit import IGNORED_FILES, XET_CLIENT_INLINE_MAX_BYTES, check_path, upload_mode
from peft_hub.hub.hf.write import json_object, main_only, parent_files, writable
from peft_hub.hub.limits import HF_COMMIT_CAP
from peft_hub.hub.models import pk
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import receive

router = APIRouter()

#: Objects one LFS batch request may name (an adapter has far fewer files).
MAX_LFS_OBJECTS = 256

XET_HINT = (
    "peft-hub does not speak the Xet protocol. huggingface_hub >= 1.0 is sent files of up to "
    f"{XET_CLIENT_INLINE_MAX_BYTES // 1024**3} GiB inline; for a larger file (or more in one commit than the "
    f"{HF_COMMIT_CAP // 1024**2} MiB a commit body may carry) set HF_HUB_DISABLE_XET=1 so huggingface_hub "
    "uploads it through Git LFS instead"
)
#: The huggingface_hub version in its User-Agent: ``...; hf_hub/2.4.0; ...``.
_HF_HUB_AGENT = re.compile(r"(?:^|[;\s])(?:hf_hub|huggingface_hub)/(\d{1,6})\.")


def takes_xet(user_agent: str) -> bool:
    """Whether the client sends LFS files through Xet: huggingface_hub >= 1.0
    does whenever ``hf_xet`` is importable (a dependency it installs), and
    ignores the repo's ``xetEnabled``. Older ones ask ``xetEnabled`` (we say
    false) and take Git LFS, as does anything that is not huggingface_hub."""
    match = _HF_HUB_AGENT.search(user_agent)
    return match is not None and int(match.group(1)) >= 1


@router.post("/api/models/{owner}/{name}/preupload/{rev}")
async def preupload(
    owner: str, name: str, rev: str, request: Request, session: SessionDep, principal: HfPrincipalDep,
    create_pr: str | None = None,
) -> dict[str, Any]:
    """Say how each file travels: inline up to the inline limit, else LFS
    (see :func:`_upload_plan`).

    A name the registry refuses (a pickle, a subfolder) fails here, before
    any bytes are sent. ``oid`` is the stored sha256 for LFS files, so an
    unchanged one is not sent again.
    """
    main_only(rev, create_pr)
    body = await json_object(request)
    ignored = gitignore_matcher(body.get("gitIgnore"))
    xet = takes_xet(request.headers.get("user-agent", ""))
    return await run_in_threadpool(
        _upload_plan, session, principal, owner, name, body.get("files") or [], ignored, xet)


def _upload_plan(
    session: Session, principal: Principal | None, owner: str, name: str, files: list[Any],
    ignored: Callable[[str], bool], xet: bool,
) -> dict[str, Any]:
    """Each file inline up to the inline limit (higher for a Xet client, while
    the commit body stays under its cap), else LFS; a file the parent holds
    unchanged gets its oid so it is not sent again."""
    adapter, _ = writable(session, principal, owner, name)
    if not isinstance(files, list) or len(files) > MAX_LFS_OBJECTS:
        raise InvalidInputError(f"'files' must be a list of at most {MAX_LFS_OBJECTS} files")
    parent, _ = parent_files(session, adapter)
    out = []
    body_left = HF_COMMIT_CAP - 1024**2  # what inline files may take of the commit body (header aside)
    for spec in files:
        path, size = (spec.get("path"), spec.get("size")) if isinstance(spec, dict) else (None, None)
        if isinstance(path, str) and (path in IGNORED_FILES or ignored(path)):
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": True, "oid": None})
            continue
        path = check_path(path)
        if not _is_count(size) or size < 0:
            raise InvalidInputError(f"{path}: 'size' must be a non-negative integer")
        if size > size_cap(path):
            raise InvalidAdapterError(f"{path} is {size} bytes, above the {size_cap(path)} byte cap")
        line = size * 4 // 3 + 4 + 1024  # base64, and the JSON around it
        mode = upload_mode(size, takes_xet=xet and line <= body_left)
        if mode == "regular":
            body_left -= line
        known = parent.get(path)
        oid = known.sha256 if mode == "lfs" and known is not None else None
        out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return {"files": out}


#: A ``.gitignore`` longer than this is refused (patterns beyond it would not be read).
GITIGNORE_MAX = 64 * 1024


def gitignore_matcher(text: Any) -> Callable[[str], bool]:
    """Whether a path is ignored by the ``.gitignore`` a client sends with its
    preupload (``gitIgnore``), as huggingface.co answers ``shouldIgnore``.

    The common subset of gitignore: blank lines and ``#`` comments skipped, a
    pattern with a ``/`` (or ending in one) matches from the root, one without
    matches any path component; ``!`` negations are not supported and refused.
    """
    if text is None:
        return lambda path: False
    if not isinstance(text, str) or len(text) > GITIGNORE_MAX:
        raise InvalidInputError(f"'gitIgnore' must be a string of at most {GITIGNORE_MAX} characters")
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise InvalidInputError(f"the .gitignore line {line[:80]!r}: negations ('!') are not supported")
        patterns.append(line)

    def ignored(path: str) -> bool:
        parts = path.split("/")
        for pattern in patterns:
            directory = pattern.endswith("/")
            pat = pattern.strip("/")
            if "/" in pattern.rstrip("/"):  # anchored at the root
                depth = pat.count("/") + 1
                prefixes = ["/".join(parts[:i]) for i in range(depth, len(parts) + (0 if directory else 1))]
                if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
                    return True
            elif any(fnmatch.fnmatchcase(part, pat) for part in (parts[:-1] if directory else parts)):
                return True
        return False

    return ignored


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
    _, writer = await run_in_threadpool(writable, session, principal, owner, repo[: -len(".git")])
    items = body.get("objects") or []
    if not isinstance(items, list) or len(items) > MAX_LFS_OBJECTS:
        raise InvalidInputError(f"'objects' must be a list of at most {MAX_LFS_OBJECTS} objects")
    key = blobs.signing_key(request.app.state, settings)
    expires = int(time.time()) + settings.presign_expiry
    valid = [FileEntry(str(o["oid"]), o["size"], o["oid"]) for o in items
             if isinstance(o, dict) and not _lfs_problem(o.get("oid"), o.get("size"))]
    # Only blobs the caller holds count as present: no existence oracle.
    have = await run_in_threadpool(_plan_uploads, session, store, writer, valid, settings.upload_lease_seconds)
    objects = []
    for obj in items:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        item: dict[str, Any] = {"oid": str(oid)[:64], "size": size if _is_count(size) else 0}
        problem = _lfs_problem(oid, size)
        if problem:
            item["error"] = {"code": 422, "message": problem}
        else:
            assert isinstance(oid, str) and isinstance(size, int)  # as _lfs_problem checked
            if oid not in have:
                user = pk(writer.user)
                signature = blobs.sign(key, oid, size, expires, user)
                query = urlencode({"size": size, "expires": expires, "user": user, "signature": signature})
                href = str(request.url_for("hf_lfs_upload", sha256=oid)) + "?" + query
                item["actions"] = {"upload": {"href": href, "expires_in": settings.presign_expiry}}
            item["authenticated"] = True
        objects.append(item)
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        media_type="application/vnd.git-lfs+json")


def _plan_uploads(
    session: Session, store: BlobStore, principal: Principal, entries: list[FileEntry], lease: int
) -> set[str]:
    return possession.stored_and_held(session, store, principal, entries, lease_seconds=lease)


def _is_count(value: Any) -> TypeGuard[int]:
    """A JSON integer: not a float, and not ``true``/``false`` (a bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _lfs_problem(oid: Any, size: Any) -> str | None:
    if not isinstance(oid, str) or len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
        return "oid must be a sha256 in 64 lowercase hex digits"
    if not _is_count(size) or size < 0:
        return "size must be a non-negative integer"
    if size > WEIGHTS_MAX_BYTES:
        return f"{size} bytes is above the {WEIGHTS_MAX_BYTES} byte cap"
    return None


@router.put("/api/hf/lfs/{sha256}", name="hf_lfs_upload")
async def lfs_upload(
    sha256: str, request: Request, session: SessionDep, store: StoreDep, settings: SettingsDep,
    size: int = Query(ge=0, le=WEIGHTS_MAX_BYTES), expires: int = Query(ge=0, le=2**62),
    user: int = Query(ge=0, le=2**62),
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
