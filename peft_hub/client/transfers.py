"""Uploads to the hub or to presigned S3 URLs, with progress bars, and the
checks on the hub's answers that decide what moves where (downloads, which
resume and verify, are in :mod:`peft_hub.client.download`).

Uploads are retried on failures that may pass (see :mod:`peft_hub.client.http`):
an upload is a content-addressed PUT, so sending it again is harmless.

The hub's answers decide what moves where, so they are checked before any
byte moves: file names, digests, sizes and revision ids must be exactly what
the registry itself would store, an upload may only send a file this push
holds, and the token travels only to the hub's own origin (scheme, host and
port), whatever a preupload answer or a redirect says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILES, size_cap, validate_filename
from peft_hub.client.http import redact
from peft_hub.client.multipart import MultipartTarget, parse_plan
from peft_hub.client.names import check_revision, check_sha256
from peft_hub.client.put import put_file
from peft_hub.client.retry import NO_RETRY, RetryPolicy
from peft_hub.errors import InvalidAdapterError, InvalidInputError
from peft_hub.model_files import MAX_MODEL_FILES
from peft_hub.names import check_no_twins
from peft_hub.progress import tqdm

#: The most files a pulled repo may list: an adapter's cap, or a base model's.
MAX_REPO_FILES = max(MAX_FILES, MAX_MODEL_FILES)
#: Headers a preupload answer may not set: credentials, and framing we decide ourselves.
_RESERVED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "host", "content-length", "transfer-encoding", "connection",
})


@dataclass(frozen=True)
class RemoteFile:
    """One file of a revision as the hub lists it, after checking."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class UploadTarget:
    """Where one blob goes, after checking the hub's preupload answer."""

    url: httpx.URL
    method: str
    headers: dict[str, str]
    entry: FileEntry


# --- checking what the hub says ----------------------------------------------


def remote_manifest(detail: Any) -> tuple[str, list[RemoteFile]]:
    """The revision id and files of a revision detail, refused unless every
    value is safe to use in a path: nothing is written before this passes.

    Raises:
        InvalidAdapterError: (or UnsafeFormatError) naming the first bad value.
    """
    try:
        if not isinstance(detail, dict) or not isinstance(detail.get("files"), list):
            raise InvalidAdapterError("the answer is not a revision with a list of files")
        revision, files = check_revision(detail.get("revision")), detail["files"]
        if len(files) > MAX_REPO_FILES:
            raise InvalidAdapterError(f"it lists {len(files)} files, and a repo has at most {MAX_REPO_FILES}")
        out: list[RemoteFile] = []
        for item in files:
            if not isinstance(item, dict):
                raise InvalidAdapterError(f"a file entry is not an object: {item!r:.80}")
            name = _remote_name(item.get("path"))
            size = item.get("size")
            if type(size) is not int or not 0 <= size <= size_cap(name):
                raise InvalidAdapterError(f"{name}: size {size!r:.40} is not an integer from 0 to {size_cap(name)}")
            out.append(RemoteFile(name, check_sha256(item.get("sha256"), f"{name}: sha256"), size))
        check_no_twins(f.path for f in out)  # one file on a case-insensitive or normalizing disk
    except InvalidAdapterError as exc:
        raise type(exc)(f"refusing the hub's file list, nothing was written: {exc}") from None
    return revision, out


def _remote_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidAdapterError(f"file name {name!r:.80} is not a string")
    return validate_filename(name)  # the hub's own rule: a portable plain name, allowlisted


def upload_plan(session: httpx.Client, plan: Any, entries: list[FileEntry]) -> list[UploadTarget | MultipartTarget]:
    """The uploads a preupload answer asks for, each tied to a file of this push.

    The local file is picked by its sha256 from ``entries``, never by a path
    the hub sent, so a hub cannot make the client read any other file.
    """
    ours = {e.sha256: e for e in entries}
    if not isinstance(plan, dict) or not isinstance(plan.get("uploads"), list):
        raise InvalidInputError("the hub's preupload answer has no list of uploads")
    targets: dict[str, UploadTarget | MultipartTarget] = {}
    for item in plan["uploads"]:
        if not isinstance(item, dict):
            raise InvalidInputError(f"the hub's preupload answer holds {item!r:.80}, not an upload")
        sha256 = item.get("sha256")
        entry = ours.get(sha256) if isinstance(sha256, str) else None
        if entry is None:
            raise InvalidInputError(f"the hub asked for blob {item.get('sha256')!r:.80}, which this push does not hold")
        if "multipart" in item:  # a large file in parts, straight to S3
            targets.setdefault(entry.sha256, parse_plan(item, entry, lambda url: absolute_url(session, url)))
            continue
        method = item.get("method", "PUT")
        if method not in ("PUT", "POST"):
            raise InvalidInputError(f"the hub asked for an upload with method {method!r:.20}")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            raise InvalidInputError("the hub's upload headers are not a mapping of strings")
        headers = {k: v for k, v in headers.items() if k.lower() not in _RESERVED_HEADERS}
        targets.setdefault(entry.sha256, UploadTarget(absolute_url(session, item.get("url")), method, headers, entry))
    return list(targets.values())


def absolute_url(session: httpx.Client, url: Any, base: httpx.URL | None = None) -> httpx.URL:
    """``url`` resolved against ``base`` (default: the hub), refused unless plain http(s)."""
    try:
        if not isinstance(url, str) or not url:
            raise ValueError("not a string")
        resolved = (base or session.base_url).join(url)
    except (ValueError, httpx.InvalidURL):
        raise InvalidInputError(f"the hub sent an invalid URL {redact(str(url))!r}") from None
    if resolved.scheme not in ("http", "https") or not resolved.host or resolved.userinfo:
        raise InvalidInputError(f"the hub sent a URL that is not plain http(s): {redact(resolved)}")
    return resolved


# --- moving bytes --------------------------------------------------------------


def upload(
    session: httpx.Client, target: UploadTarget, path: Path, bar: tqdm, *, retry: RetryPolicy = NO_RETRY,
) -> None:
    """Send one file to the URL the hub handed out (its own, or presigned S3), as
    :func:`peft_hub.client.put.put_file` sends it; a 412 (If-None-Match: someone stored
    the same blob first) is success."""
    put_file(session, target.url, target.headers, path, bar, what=f"upload of {path.name}",
             length=target.entry.size, retry=retry, method=target.method)
