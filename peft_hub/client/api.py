"""``HubClient``: the Python API behind every CLI command."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from peft_hub.adapter import FileEntry, validate_dir, validate_namespace
from peft_hub.client.cache import BlobCache, BlobChangedError, assemble, check_revision, links
from peft_hub.client.http import RetryPolicy, build_session, clean_text, json_body, raise_for_status, send
from peft_hub.client.refs import Ref, parse_ref
from peft_hub.client.transfers import download, remote_manifest, upload, upload_plan
from peft_hub.errors import (
    AuthenticationError, ConflictError, HubUnreachableError, InvalidInputError, InvalidNameError, PeftHubError,
    UploadRequiredError, error_from_code,
)
from peft_hub.paths import save_token, token_file
from peft_hub.progress import tqdm

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass
class PulledAdapter:
    """A pulled adapter on disk and where it came from."""

    path: Path
    repo_id: str
    revision: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    bytes_downloaded: int = 0


@dataclass
class PushResult:
    """What a push did."""

    repo_id: str
    revision: str
    created: bool
    bytes_uploaded: int
    files_uploaded: int
    detail: dict[str, Any] = field(default_factory=dict)


def saved_token() -> str | None:
    """The token saved by ``login`` or by the hub's first start, if any."""
    try:
        return token_file().read_text().strip() or None
    except OSError:
        return None


class HubClient:
    """Talks to one hub. All HTTP goes through ``self.http``, which tests may replace.

    Args:
        url: the hub's URL (default ``$PEFT_HUB_URL`` or http://127.0.0.1:8000).
        token: an API token (default ``$PEFT_HUB_TOKEN``, then the saved token).
        cache_dir: where pulled blobs are cached (default ``$PEFT_HUB_CACHE``).
        transport: an httpx transport, for tests.
        timeout: seconds a read or write may stall, or an ``httpx.Timeout``
            (default ``$PEFT_HUB_TIMEOUT``, else 60; connecting: 10).
        retry: how failures that may pass are retried (default
            :meth:`RetryPolicy.from_env`; ``RetryPolicy(attempts=1)`` never retries).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = (url or os.environ.get("PEFT_HUB_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("PEFT_HUB_TOKEN") or saved_token()
        self.cache = BlobCache(cache_dir)
        self.retry = retry or RetryPolicy.from_env()
        self.http = build_session(self.url, self.token, transport, timeout=timeout)
        self._me: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        return json_body(send(self.http, method, path, retry=self.retry, idempotent=idempotent, **kwargs))

    # --- identity ----------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The caller's user name, scope and organisations."""
        if not self.token:
            raise AuthenticationError("not logged in: run `peft-hub login` or set PEFT_HUB_TOKEN")
        return self._json("GET", "/api/whoami")

    def login(self, token: str) -> dict[str, Any]:
        """Check ``token`` against the hub and save it for later commands."""
        self.token = token
        self.http.headers["Authorization"] = f"Bearer {token}"
        me = self.whoami()
        save_token(token)
        return me

    def resolve(self, ref: str | Ref) -> Ref:
        """Fill in the caller's namespace for a bare name."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.owner is None:
            if self._me is None:
                me = self.whoami()  # Ref checks the name: the hub may answer anything
                self._me = me.get("name") if isinstance(me, dict) else me
            ref = Ref(self._me, ref.name, ref.revision)
        return ref

    def create_token(
        self, *, scope: str = "read", namespace: str | None = None, limit: list[str] | None = None, name: str = "",
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Ask the hub for a new token; its plaintext is in ``["token"]``, shown once.

        Anyone may create tokens for themselves, with no more scope, limits or
        lifetime than their own token; an admin may create them for any user.

        Args:
            scope: read, write or admin (admin only for admin users).
            namespace: the user the token acts as (an admin's choice; created if new); default: you.
            limit: restrict the token to these namespaces.
            name: a label shown by :meth:`list_tokens`.
            expires_at: when the token stops working (naive times are UTC); default: never.
        """
        body = {"scope": scope, "namespace": namespace, "limit": limit, "name": name,
                "expires_at": expires_at.isoformat() if expires_at else None}
        return self._json("POST", "/api/tokens", json=body)

    def list_tokens(self, *, user: str | None = None) -> list[dict[str, Any]]:
        """Your tokens (an admin may name another ``user``): ids, scopes, limits, times; never secrets."""
        return self._json("GET", "/api/tokens", params={"user": user} if user else None)

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of your tokens (an admin: anyone's); its web sign-ins end too."""
        self._json("DELETE", f"/api/tokens/{int(token_id)}")

    def audit(
        self, *, actor: str | None = None, action: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Audit events, newest first (needs an admin token without namespace limits)."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("actor", actor), ("action", action), ("since", since.isoformat() if since else None)):
            if value:
                params[key] = value
        return self._json("GET", "/api/admin/audit", params=params)

    def add_member(self, org: str, user: str) -> dict[str, Any]:
        """Add ``user`` to organisation ``org`` (needs an admin token)."""
        return self._json("PUT", f"/api/orgs/{org}/members/{user}")

    # --- push and pull -----------------------------------------------------

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        private: bool | None = None,
        message: str = "",
    ) -> PushResult:
        """Validate an adapter directory locally, upload missing blobs, publish.

        Args:
            path: the adapter directory (as ``save_pretrained`` wrote it).
            name: ``owner/name`` or a bare name; default: the directory's name.
            tags: extra tags to point at the new revision (``main`` always moves).
            private: make the adapter private (None keeps the current setting).
            message: a note stored with the revision.

        Returns:
            The revision id and what was transferred.
        """
        path = Path(path)
        meta, entries = validate_dir(path)
        if name is None:
            try:
                name = validate_namespace(path.resolve().name)
            except InvalidNameError as exc:
                raise InvalidNameError(f"{exc}; pass --name owner/name") from None
        ref = self.resolve(name)
        files = [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries]
        body = {"files": files, "tags": list(tags), "private": private, "message": message}
        total = count = 0
        for attempt in range(3):
            sent, n = self._upload_missing(ref, path, entries, files)
            total, count = total + sent, count + n
            try:
                # Idempotent by content: the same manifest gives the same
                # revision ("created": false on a repeat), so it may be retried.
                detail = self._json("POST", f"/api/adapters/{ref.repo_id}/commit", json=body, idempotent=True)
                break
            # Another push to the same name committed first; or between our
            # upload and commit a blob's proof went away (another user's
            # identical upload on S3, a gc): ask again and send what is asked.
            except (ConflictError, UploadRequiredError):
                if attempt == 2:
                    raise
        if not isinstance(detail, dict):
            raise InvalidInputError("the hub's commit answer is not an object")
        revision = check_revision(detail.get("revision"))
        return PushResult(ref.repo_id, revision, detail.get("created") is True, total, count, detail)

    def _upload_missing(self, ref: Ref, path: Path, entries: list[FileEntry], files: list[dict[str, Any]]) -> tuple[int, int]:
        """Upload what the hub asks for; returns the bytes and files sent."""
        plan = self._json("POST", f"/api/adapters/{ref.repo_id}/preupload", json={"files": files}, idempotent=True)
        targets = upload_plan(self.http, plan, entries)
        total = sum(t.entry.size for t in targets)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {ref.repo_id}") as bar:
            for target in targets:  # the local file is ours, chosen by sha256, never a path the hub sent
                upload(self.http, target, path / target.entry.path, bar, retry=self.retry)
        return total, len(targets)

    def info(self, ref: str | Ref, *, count_download: bool = False) -> dict[str, Any]:
        """An adapter at a revision: metadata, files with sha256, tags."""
        ref = self.resolve(ref)
        params = {"revision": ref.revision or "main"}
        if count_download:
            params["download"] = "true"
        return self._json("GET", f"/api/adapters/{ref.repo_id}", params=params)

    def pull(self, ref: str | Ref, output_dir: str | os.PathLike[str] | None = None) -> PulledAdapter:
        """Download an adapter, verifying every file's sha256.

        Files already in the cache (from any adapter or revision) are not
        transferred again, unless their cached copy fails its check (then it
        is fetched again, never handed over). Without ``output_dir`` the
        adapter is assembled as a snapshot inside the cache (read-only hard
        links), which is what compose and materialize use; ``output_dir``
        gets copies, hashed as they are made. Downloads are retried per
        ``self.retry``, and what a killed pull left in the cache is removed.

        Returns:
            Where the adapter is, and its immutable revision id.
        """
        ref = self.resolve(ref)
        # Every name, digest, size and the revision id are checked before they
        # become part of a path or a URL: the hub's answer is not trusted.
        revision, files = remote_manifest(self.info(ref, count_download=True))
        label = f"{ref.repo_id}@{revision[:12]}"
        self.cache.leftovers(remove=True)
        downloaded = 0
        for last in (False, True):
            missing = [f for f in files if self.cache.checked(f.sha256, f.size) is None]
            downloaded += sum(f.size for f in missing)
            with tqdm(total=sum(f.size for f in missing), unit="B", unit_scale=True, desc=f"pull {ref.repo_id}") as bar:
                for f in missing:
                    url = f"/api/adapters/{ref.repo_id}/resolve/{revision}/{quote(f.path, safe='')}"
                    download(self.http, url, f.sha256, f.size, self.cache, bar, name=f"{label}: {f.path}",
                             retry=self.retry)
            blobs = {f.path: self.cache.blob_path(f.sha256) for f in files}
            try:
                if output_dir is None:
                    target = self.cache.snapshot_path(ref.repo_id, revision)
                    if not links(target, blobs):
                        assemble(blobs, target, link=True)
                        for f in files:  # the new links changed the blobs' ctime, not their bytes
                            self.cache.restamp(f.sha256)
                else:
                    target = assemble(blobs, Path(output_dir), digests={f.path: f.sha256 for f in files})
                break
            except BlobChangedError as exc:  # changed between its check and its copy: fetch it again, once
                self.cache.discard(exc.sha256)
                if last:
                    raise BlobChangedError(f"{label}: {exc}", exc.sha256) from None
        return PulledAdapter(target, ref.repo_id, revision, {f.path: f.sha256 for f in files}, downloaded)

    # --- discovery ---------------------------------------------------------

    def search(self, query: str | None = None, **filters: Any) -> dict[str, Any]:
        """Search adapters; filters are base_model, method, min_rank, max_rank,
        target_module, owner, tag, sort, order, page and per_page."""
        params = {k: v for k, v in {"q": query, **filters}.items() if v is not None}
        return self._json("GET", "/api/adapters", params=params)

    def revisions(self, ref: str | Ref) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/adapters/{self.resolve(ref).repo_id}/revisions")

    def lineage(self, ref: str | Ref) -> dict[str, Any]:
        ref = self.resolve(ref)
        return self._json("GET", f"/api/adapters/{ref.repo_id}/lineage", params={"revision": ref.revision or "main"})

    # --- changes -----------------------------------------------------------

    def set_tag(self, ref: str | Ref, tag: str) -> dict[str, Any]:
        """Point ``tag`` at the revision ``ref`` names (default: main)."""
        ref = self.resolve(ref)
        return self._json("PUT", f"/api/adapters/{ref.repo_id}/tags/{tag}", json={"revision": ref.revision or "main"})

    def delete_tag(self, ref: str | Ref, tag: str) -> None:
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}/tags/{tag}")

    def delete(self, ref: str | Ref) -> None:
        """Delete an adapter with all its revisions."""
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}")

    def add_evals(self, ref: str | Ref, evals: list[dict[str, Any]]) -> dict[str, Any]:
        """Attach eval results (metric, value, dataset, dataset_version, split, extra) to a revision."""
        ref = self.resolve(ref)
        return self._json(
            "POST", f"/api/adapters/{ref.repo_id}/evals", json={"revision": ref.revision or "main", "evals": evals}
        )

    def evals(self, ref: str | Ref) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/adapters/{self.resolve(ref).repo_id}/evals")

    def delete_eval(self, ref: str | Ref, eval_id: int) -> None:
        """Remove one eval result (needs write access to the adapter's namespace)."""
        self._json("DELETE", f"/api/adapters/{self.resolve(ref).repo_id}/evals/{int(eval_id)}")

    def gc(self, *, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Delete unreferenced blobs older than the grace period (admin)."""
        return self._json("POST", "/api/admin/gc", json={"grace_seconds": grace_seconds, "dry_run": dry_run})

    def fsck_events(self, *, repair: bool = False) -> Iterator[dict[str, Any]]:
        """The hub's fsck as it runs (admin): ``start``, ``progress`` and
        ``problem`` events, then ``done`` with the report. An ``error`` event
        is raised as the error it names; so is a stream that stops early."""
        try:
            with self.http.stream("POST", "/api/admin/fsck", json={"repair": repair}) as response:
                raise_for_status(response)
                for event in _ndjson(response.iter_bytes()):
                    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                        raise PeftHubError("the hub sent an fsck event that is not an object with an 'event' name")
                    if event["event"] == "error":
                        raise error_from_code(str(event.get("error")), clean_text(str(event.get("detail", ""))))
                    if event["event"] == "done" and not isinstance(event.get("report"), dict):
                        raise PeftHubError("the hub's fsck report is not an object")
                    yield event
                    if event["event"] == "done":
                        return
        except httpx.TransportError as exc:
            raise HubUnreachableError(f"cannot reach {self.url}: {exc}") from exc
        raise PeftHubError("the hub's fsck stream ended before its report")

    def fsck(self, *, repair: bool = False) -> dict[str, Any]:
        """Check on the hub that every blob a revision references is stored
        with the right size and sha256, with a progress bar (admin).

        Args:
            repair: mark blobs whose bytes do not verify as corrupt (owners are
                then asked to upload them again) and the revisions that need a
                missing or corrupt blob as broken. Nothing is ever deleted.

        Returns:
            The report: ``clean``, ``problems`` (each naming the ``files`` —
            adapter, revision, path — that need the blob), ``counts``,
            ``unreferenced`` objects (count and bytes) and what ``repaired`` marked.
        """
        with tqdm(total=0, unit="B", unit_scale=True, desc="fsck") as bar:
            for event in self.fsck_events(repair=repair):
                kind = event["event"]
                if kind == "start" and isinstance(event.get("bytes"), int):
                    bar.total = event["bytes"]
                    bar.refresh()
                elif kind == "progress" and isinstance(event.get("bytes_checked"), int):
                    bar.update(max(0, event["bytes_checked"] - bar.n))
                elif kind == "done":
                    return event["report"]
        raise PeftHubError("the hub's fsck stream ended before its report")  # fsck_events raises first


#: The longest NDJSON line read from the hub (a report of many problems is a few MB).
NDJSON_LINE_LIMIT = 32 * 1024 * 1024


def _ndjson(chunks: Iterable[bytes], limit: int = NDJSON_LINE_LIMIT) -> Iterator[Any]:
    """Parse a stream of newline-separated JSON values, no line longer than ``limit``."""
    buffer = bytearray()
    for chunk in chunks:
        start = len(buffer)
        buffer += chunk
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            start = 0
            if line.strip():
                yield _json_line(line)
        if len(buffer) > limit:
            raise PeftHubError(f"the hub sent a line longer than {limit} bytes")
    if buffer.strip():
        yield _json_line(bytes(buffer))


def _json_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        raise PeftHubError("the hub sent a line that is not JSON") from None
