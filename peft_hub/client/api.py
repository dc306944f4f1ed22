"""``HubClient``: the Python API behind every CLI command."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from peft_hub.adapter import FileEntry
from peft_hub.client.admin_api import AdminMixin
from peft_hub.client.assemble import assemble, links
from peft_hub.client.cache import BlobCache, check_staged, fingerprint
from peft_hub.client.download import download, fetch_all
from peft_hub.client.http import build_session, json_body, send
from peft_hub.client.multipart import PART_BYTES, MultipartTarget, UploadState, send_in_parts, wanted, without
from peft_hub.client.names import REVISION_RE, BlobChangedError, check_revision
from peft_hub.client.repo_api import RepoMixin
from peft_hub.client.retry import RetryPolicy
from peft_hub.client.transfers import RemoteFile, UploadTarget, remote_manifest, upload, upload_plan
from peft_hub.errors import (
    AuthenticationError,
    ConflictError,
    InvalidAdapterError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    RevisionNotFoundError,
    UploadRequiredError,
)
from peft_hub.names import validate_namespace
from peft_hub.outdir import plan_output, replace_output
from peft_hub.paths import save_token, save_url, saved_url, token_file
from peft_hub.progress import tqdm
from peft_hub.refs import Ref, parse_ref
from peft_hub.repo_kinds import Kind, check_kind, checked_dir, dir_kind, infer_kind, kind_mismatch

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


def check_adapter_dir(path: Path) -> None:
    """A clear refusal for a directory that is not a PEFT adapter (a base model, a checkpoint)."""
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        if (path / "config.json").is_file():
            raise InvalidAdapterError(f"{path} is a model, not an adapter (no adapter_config.json); "
                                      "to host it as a base model, push it with --kind model")
        raise InvalidAdapterError(f"{path} is not a PEFT adapter (no adapter_config.json)")


def check_repo_dir(path: Path, kind: Kind) -> None:
    """Refuse a directory whose files make the other kind than ``--kind`` says."""
    if dir_kind(path) == "model" and kind == "adapter":
        raise InvalidAdapterError(f"{path} is a model, not an adapter (config.json, no adapter_config.json)")
    if dir_kind(path) == "adapter" and kind == "model":
        what = "an adapter, not a model" if (path / "adapter_config.json").is_file() else "not a model"
        raise InvalidAdapterError(f"{path} is {what} (--kind model needs config.json and no adapter_config.json)")


def saved_token() -> str | None:
    """The token saved by ``login`` or by the hub's first start, if any."""
    try:
        return token_file().read_text().strip() or None
    except OSError:
        return None


class HubClient(RepoMixin, AdminMixin):
    """Talks to one hub. All HTTP goes through ``self.http``, which tests may replace.

    Args:
        url: the hub's URL (default ``$PEFT_HUB_URL``, then the URL ``login`` or
            the hub's first start saved beside the token, then http://127.0.0.1:8000).
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
        env_url, saved = os.environ.get("PEFT_HUB_URL"), saved_url()
        #: Where the URL came from: "given" (``--url``/``PEFT_HUB_URL``), "saved" (beside the token) or "default".
        self.url_source = "given" if url or env_url else "saved" if saved else "default"
        self.url = (url or env_url or saved or DEFAULT_URL).rstrip("/")
        env_token = os.environ.get("PEFT_HUB_TOKEN")
        #: Whether a token was given (``--token``/``PEFT_HUB_TOKEN``) rather than read from the saved file.
        self.token_given = bool(token or env_token)
        self.token = token or env_token or saved_token()
        self.cache = BlobCache(cache_dir)
        self.retry = retry or RetryPolicy.from_env()
        self.http = build_session(self.url, self.token, transport, timeout=timeout)
        self._me: str | None = None
        #: Files larger than this go to S3 in parts of this size (when the hub plans parts).
        self.part_bytes = PART_BYTES

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
        """Check ``token`` against the hub, then save it and the hub's URL for later commands."""
        self.token = token
        self.http.headers["Authorization"] = f"Bearer {token}"
        me = self.whoami()
        save_token(token)
        save_url(self.url)
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

    # --- push and pull -----------------------------------------------------

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        private: bool | None = None,
        message: str = "",
        kind: Kind | None = None,
    ) -> PushResult:
        """Validate an adapter (or base model) directory locally, upload missing blobs, publish.

        Args:
            path: the adapter directory (as ``save_pretrained`` wrote it).
            kind: "model" to push a transformers base model directory; the
                default, None, pushes an adapter and refuses a model directory.
            name: ``owner/name`` or a bare name; default: the directory's name.
            tags: extra tags to point at the new revision (``main`` always moves).
            private: make the adapter private, or public; None keeps the
                current setting (a new repo is public). A repo the hub said was
                private when the upload began stays private: the commit says
                so, even if the repo was deleted meanwhile (the commit then
                re-creates it) or made public meanwhile.
            message: a note stored with the revision.

        Returns:
            The revision id and what was transferred.
        """
        path = Path(path)
        if kind is None:
            check_adapter_dir(path)
        else:
            check_repo_dir(path, check_kind(kind))
        kind = kind or "adapter"
        with checked_dir(kind, path) as checked:  # the sha256s run on while the hub is asked who we are
            if name is None:
                try:
                    name = validate_namespace(path.resolve().name)
                except InvalidNameError as exc:
                    raise InvalidNameError(f"{exc}; pass --name owner/name") from None
            ref = self.resolve(name)
            if kind == "model":  # before any upload: a model is large, and an adapter repo would refuse it
                self._check_repo_kind(ref, kind)
            _, entries = checked()
        files = [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries]
        body = {"files": files, "tags": list(tags), "private": private, "message": message}
        total = count = 0
        for attempt in range(3):
            sent, n, seen_private = self._upload_missing(ref, path, entries, files)
            total, count = total + sent, count + n
            if private is None and seen_private:
                # Kept, not "the current setting": a delete during the upload would have the commit
                # re-create the repo public. A push never makes public what it saw private.
                body["private"] = True
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

    def _check_repo_kind(self, ref: Ref, kind: Kind) -> None:
        """Refuse a push into an existing repo of the other kind (read from its files)."""
        try:
            detail = self.info(Ref(ref.owner, ref.name, None))
        except NotFoundError:
            return
        files = detail.get("files") if isinstance(detail, dict) else None
        names = [str(f.get("path")) for f in files if isinstance(f, dict)] if isinstance(files, list) else []
        if names and infer_kind(names) != kind:
            raise kind_mismatch(ref.repo_id, infer_kind(names), kind)

    def _upload_missing(
        self, ref: Ref, path: Path, entries: list[FileEntry], files: list[dict[str, Any]],
    ) -> tuple[int, int, bool]:
        """Upload what the hub asks for; returns the bytes and files sent, and
        whether the hub said the repo is private (False too when it did not say).
        A file larger than a part proposes its parts' digests (and resumes an
        earlier upload in parts, see :mod:`peft_hub.client.multipart`)."""
        states = {e.sha256: UploadState(self.cache.root, e, path / e.path) for e in entries if e.size > self.part_bytes}

        def preupload(now: bool, only: set[str] | None = None) -> Any:
            asked = [{**f, "multipart": states[f["sha256"]].spec(self.part_bytes, now=now)}
                     if f["sha256"] in states else f for f in files if only is None or f["sha256"] in only]
            return self._json("POST", f"/api/adapters/{ref.repo_id}/preupload", json={"files": asked},
                              idempotent=True)

        plan = preupload(now=False)  # a large file's parts are hashed only if the hub wants it in parts
        seen_private = isinstance(plan, dict) and plan.get("private") is True
        again = wanted(plan) & states.keys()
        targets = upload_plan(self.http, without(plan, again), entries)
        if again:  # the second answer may name only the blobs asked about again
            asked = [e for e in entries if e.sha256 in again]
            targets += upload_plan(self.http, preupload(now=True, only=again), asked)
        total = sum(t.entry.size for t in targets)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {ref.repo_id}") as bar:
            for target in targets:  # the local file is ours, chosen by sha256, never a path the hub sent
                file = path / target.entry.path
                if isinstance(target, MultipartTarget):
                    if send_in_parts(self.http, self._json, ref.repo_id, target, file,
                                     states.get(target.entry.sha256), bar, retry=self.retry):
                        continue
                    bar.update(-target.entry.size)  # stored by someone else: prove it through the hub
                    url = f"/api/blobs/{target.entry.sha256}?size={target.entry.size}"
                    target = UploadTarget(self.http.base_url.join(url), "PUT", {}, target.entry)
                upload(self.http, target, file, bar, retry=self.retry)
        return total, len(targets), seen_private

    def info(self, ref: str | Ref, *, count_download: bool = False) -> dict[str, Any]:
        """An adapter at a revision: metadata, files with sha256, tags."""
        ref = self.resolve(ref)
        params = {"revision": ref.revision or "main"}
        if count_download:
            params["download"] = "true"
        return self._json("GET", f"/api/adapters/{ref.repo_id}", params=params)

    def pull(
        self, ref: str | Ref, output_dir: str | os.PathLike[str] | None = None, *, into_existing: bool = False
    ) -> PulledAdapter:
        """Download an adapter, verifying every file's sha256.

        Files already in the cache (from any adapter or revision) are not
        transferred again, unless their cached copy fails its check (then it
        is fetched again, never handed over). Without ``output_dir`` the
        adapter is assembled as a snapshot inside the cache (read-only hard
        links), which is what compose and materialize use; ``output_dir``
        gets copies under the rules of :mod:`peft_hub.outdir`: each file
        downloaded now is written there (staged) as it arrives, beside the
        cache's, and each file the cache held is copied, hashed on the way
        (a new or empty directory, or an earlier pull
        of the same adapter; ``into_existing`` writes into any other
        directory, deleting nothing). Downloads are retried per
        ``self.retry``, and what a killed pull left in the cache is removed.

        Returns:
            Where the adapter is, and its immutable revision id.
        """
        ref = self.resolve(ref)
        out = None if output_dir is None else plan_output(
            output_dir, kind="pull", identity=ref.repo_id, into_existing=into_existing)  # refused before any download
        # Every name, digest, size and the revision id are checked before they
        # become part of a path or a URL: the hub's answer is not trusted.
        revision, files = remote_manifest(self.info(ref, count_download=True))
        label = f"{ref.repo_id}@{revision[:12]}"
        if ref.revision and REVISION_RE.fullmatch(ref.revision) and revision != ref.revision:
            # A revision id names fixed bytes: another revision's files are not what was asked for.
            raise RevisionNotFoundError(f"{ref.repo_id}@{ref.revision[:12]}: the hub answered revision {label}")
        self.cache.leftovers(remove=True)
        downloaded = 0
        for last in (False, True):
            missing = [f for f in files if self.cache.checked(f.sha256, f.size) is None]
            downloaded += sum(f.size for f in missing)
            staging = None if out is None else out.stage()  # hidden and locked; removed unless committed
            written: dict[str, tuple[int, int, int, int]] = {}  # -o files written as they arrived
            try:
                with tqdm(total=sum(f.size for f in missing), unit="B", unit_scale=True,
                          desc=f"pull {ref.repo_id}") as bar:

                    def fetch(f: RemoteFile, bar: tqdm = bar, staging: Path | None = staging,
                              written: dict = written) -> None:
                        url = f"/api/adapters/{ref.repo_id}/resolve/{revision}/{quote(f.path, safe='')}"
                        mirror = None if staging is None else staging / f.path
                        download(self.http, url, f.sha256, f.size, self.cache, bar, name=f"{label}: {f.path}",
                                 retry=self.retry, mirror=mirror)
                        if mirror is not None:
                            written[f.path] = fingerprint(mirror)

                    fetch_all(fetch, missing, lambda f: f.size)  # small files beside the weights
                blobs = {f.path: self.cache.blob_path(f.sha256) for f in files if f.path not in written}
                if out is None:
                    target = self.cache.snapshot_path(ref.repo_id, revision)
                    if not links(target, blobs):
                        assemble(blobs, replace_output(target, kind="snapshot", identity=label), link=True)
                        for f in files:  # the new links changed the blobs' ctime, not their bytes
                            self.cache.restamp(f.sha256)
                else:
                    # Blobs hashed as they arrived in this process are copied in the kernel,
                    # unhashed, and checked unchanged before the directory is handed over;
                    # any other is hashed as it is copied.
                    fresh = {f.path: (f.sha256, f.size) for f in files
                             if f.path in blobs and self.cache.fresh(f.sha256)}

                    def check(staged: Path, fresh: dict = fresh, written: dict = written) -> None:
                        check_staged(staged, written)
                        self.cache.check_fresh_copies(staged, fresh)

                    out.check = check
                    target = assemble(blobs, out, digests={f.path: f.sha256 for f in files if f.path not in fresh},
                                      record={"revision": revision})
                break
            except BlobChangedError as exc:  # changed between its check and its copy: fetch it again, once
                self.cache.discard(exc.sha256)
                if last:
                    raise BlobChangedError(f"{label}: {exc}", exc.sha256) from None
            finally:
                if out is not None:
                    out.abort()
        return PulledAdapter(target, ref.repo_id, revision, {f.path: f.sha256 for f in files}, downloaded)
