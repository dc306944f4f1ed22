"""A pull-through mirror of an HF-compatible upstream hub (``PEFT_HUB_UPSTREAM``).

A read of a repo this hub does not hold (``crud.get_adapter`` finds nothing)
asks the upstream for its ``main``, downloads every file into the blob store
through the verifying writer (LFS files by their ``sha256``, small files
hashed here and checked against their git blob id), and publishes it through
the same :func:`publish.publish` as a push, so only what validates as an
adapter is kept. From then on the copy is served as any other repo.

Rules, since the upstream's answers are hostile input:

- Only GETs, with the hub's own ``upstream_token`` (sent to the upstream's
  host only, never on a redirect elsewhere); a caller's token never leaves.
- Only public upstream repos are mirrored, as public repos here; a private
  one reads as missing (mirroring it would publish it).
- A repo lands only in a namespace that is missing here or was made by the
  mirror (kind ``mirror``), so an upstream cannot add repos to a local user
  or organisation.
- Sizes, file counts, JSON depth, redirect targets (http/https, 5 hops) and
  the whole fetch's duration are bounded.
- One fetch per repo at a time: a lock per repo in the process, and on
  PostgreSQL an advisory lock across replicas. A repo the upstream lacks is
  remembered for ``upstream_negative_ttl`` seconds.
- A fetch writes to the store under a storage slot, as every route that uses
  the store does (``uploads.storage_slot``), taken from the request's worker
  thread before the repo's locks; a request that holds a slot already (a
  route with ``StoreDep``) fetches under that one, never waiting for a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.from_thread
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from peft_hub.adapter import FileEntry, check_entries
from peft_hub.errors import InvalidInputError, PeftHubError, UnavailableError
from peft_hub.hub import audit, crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.hf.shapes import git_blob_oid
from peft_hub.hub.models import Adapter, name_key
from peft_hub.hub.storage import BlobStore
from peft_hub.hub.uploads import holds_slot, put_small, storage_slot
from peft_hub.hub.upstream_http import UpstreamHttp

log = logging.getLogger("peft_hub.hub")

#: The namespace kind the mirror creates; only such namespaces receive mirrored repos.
MIRROR_KIND = "mirror"
#: Files the upstream does not store in LFS are read whole; at most this size.
SMALL_FILE_MAX = 16 * 1024 * 1024
#: Repos remembered as missing, at most (the oldest are forgotten first).
NEGATIVE_MAX = 10_000
_SHA1 = re.compile(r"\A[0-9a-f]{40}\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")

_mirrors: weakref.WeakKeyDictionary[Engine, Mirror] = weakref.WeakKeyDictionary()


def _on_a_loop() -> bool:
    """Whether this thread runs an event loop (waiting there for a slot, which
    that loop hands out, would never end)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def attach(engine: Engine, store: BlobStore, settings: Any, *, state: Any = None) -> None:
    """Turn the mirror on for requests served from ``engine``, if ``settings.upstream`` is set.

    Args:
        state: the app's state, whose storage slots (``store_limiter``) a fetch
            takes; call from its event loop. None: fetches take no slot.
    """
    if settings.upstream:
        token = anyio.from_thread.current_token() if state is not None else None
        _mirrors[engine] = Mirror(engine, store, settings, UpstreamHttp.from_settings(settings), state, token)
        if on_miss not in crud.MISS_HOOKS:
            crud.MISS_HOOKS.append(on_miss)


def on_miss(session: Session, *, owner: str, name: str) -> Adapter | None:
    """The adapter, mirrored now from the upstream; None when there is no
    upstream or it cannot give this repo. Called by ``crud.get_adapter`` (a ``crud.MISS_HOOKS`` entry)."""
    bind = session.get_bind()
    mirror = _mirrors.get(bind) if isinstance(bind, Engine) else None  # a request's session is bound to the engine
    if mirror is None or not mirror.fetch(owner, name):
        return None
    return crud.find_adapter(session, owner=owner, name=name)


class _MissingError(Exception):
    """The upstream does not offer this repo (to this hub): remembered for a while."""


@dataclass
class Mirror:
    """Fetches repos from one upstream into one hub's database and store."""

    engine: Engine
    store: BlobStore
    settings: Any
    http: UpstreamHttp
    state: Any = None  # the app's state, for its storage slots
    loop: Any = None  # an anyio EventLoopToken of the app's loop, where slots are taken
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _missing: dict[str, float] = field(default_factory=dict)  # name key -> monotonic expiry

    def fetch(self, owner: str, name: str) -> bool:
        """Mirror ``owner/name`` unless it is here already; whether it is here now."""
        key = name_key(owner, name)
        if self._known_missing(key):
            return False
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with self._store_slot(), lock, self._replica_lock(key):
            try:
                with Session(self.engine) as session:
                    if crud.find_adapter(session, owner=owner, name=name) is not None:
                        return True  # another request (or replica) mirrored it meanwhile
                if self._known_missing(key):
                    return False
                self._mirror(owner, name)
                return True
            except _MissingError as exc:
                log.info("upstream mirror: %s/%s: %s", owner, name, exc)
                self._remember_missing(key)
                return False
            finally:
                with self._guard:
                    self._locks.pop(key, None)

    def _known_missing(self, key: str) -> bool:
        with self._guard:
            expiry = self._missing.get(key)
            if expiry is not None and expiry <= time.monotonic():
                del self._missing[key]
                expiry = None
            return expiry is not None

    def _remember_missing(self, key: str) -> None:
        with self._guard:
            while len(self._missing) >= NEGATIVE_MAX:
                self._missing.pop(next(iter(self._missing)))
            self._missing[key] = time.monotonic() + self.settings.upstream_negative_ttl

    @contextmanager
    def _store_slot(self) -> Iterator[None]:
        """A storage slot for the fetch, taken on the app's loop (a 503 after
        ``storage_queue_timeout``); none if this request holds one already."""
        if self.state is None or holds_slot() or _on_a_loop():
            yield
            return
        slot = storage_slot(self.state)
        anyio.from_thread.run(slot.__aenter__, token=self.loop)
        try:
            yield
        finally:
            anyio.from_thread.run(slot.__aexit__, None, None, None, token=self.loop)

    def _replica_lock(self, key: str):  # noqa: ANN202 - a context manager
        return _AdvisoryLock(self.engine, key)

    def _mirror(self, owner: str, name: str) -> None:
        deadline = time.monotonic() + self.settings.upstream_fetch_deadline
        with Session(self.engine) as session:
            ns = crud.get_namespace(session, name=owner)
            if ns is not None and ns.kind != MIRROR_KIND:
                raise _MissingError(f"namespace {owner!r} is a local one; the mirror adds nothing to it")
        info = self.http.repo_info(owner, name, deadline)
        if info is None:
            raise _MissingError("not on the upstream (or not readable with the hub's token)")
        sha, private, files = _parse_info(info, self.settings.upstream_max_bytes)
        if private:
            raise _MissingError("private on the upstream; only public repos are mirrored")
        try:
            check_entries([FileEntry(path=f["path"], size=f["size"], sha256=f["sha256"] or "0" * 64) for f in files])
        except PeftHubError as exc:
            raise _MissingError(f"cannot be mirrored: {exc.message}") from None
        entries = [self._download(owner, name, sha, f, deadline) for f in files]
        self._publish(owner, name, sha, entries)

    def _download(self, owner: str, name: str, sha: str, file: dict[str, Any], deadline: float) -> FileEntry:
        path, size, sha256 = file["path"], file["size"], file["sha256"]
        where = f"{self.http.base}: {owner}/{name}@{sha[:12]}/{path}"
        if sha256 is not None:
            stat = self.store.stat(sha256)
            if stat is not None and stat.size == size and stat.verified_sha256 == sha256:
                return FileEntry(path=path, size=size, sha256=sha256)  # the store vouches for these bytes
            writer = self.store.writer(sha256, size)
            try:
                for chunk in self.http.stream_file(owner, name, sha, path, size, deadline):
                    writer.write(chunk)
                writer.commit()
            except PeftHubError as exc:
                raise UnavailableError(f"{where}: {exc.message}; nothing of this repo was published") from None
            finally:
                writer.abort()
            return FileEntry(path=path, size=size, sha256=sha256)
        if size > SMALL_FILE_MAX:
            raise _MissingError(f"{path} is {size} bytes and not in LFS, above the {SMALL_FILE_MAX} byte cap")
        data = b"".join(self.http.stream_file(owner, name, sha, path, size, deadline))
        if len(data) != size or (file["oid"] and git_blob_oid(data) != file["oid"]):
            raise UnavailableError(f"{where}: the upstream sent {len(data)} bytes that do not match its own "
                                   "file list (size or git blob id); nothing of this repo was published")
        sha256 = hashlib.sha256(data).hexdigest()
        put_small(self.store, sha256, data)
        return FileEntry(path=path, size=size, sha256=sha256)

    def _publish(self, owner: str, name: str, sha: str, entries: list[FileEntry]) -> None:
        from peft_hub.hub.publish import publish  # late: publish imports crud, which calls on_miss

        with Session(self.engine, expire_on_commit=False) as session:
            admin = crud.get_namespace(session, name=self.settings.admin_name)
            if admin is None or not admin.is_admin:
                raise UnavailableError(f"the mirror publishes as the admin {self.settings.admin_name!r}, "
                                       "which this hub does not have")
            try:  # publish wants a session that has not written yet: the namespace is marked after
                made = crud.get_namespace(session, name=owner) is None
                adapter, revision, _ = publish(
                    session, self.store, principal=Principal(user=admin, scope="admin"), repo_id=f"{owner}/{name}",
                    entries=entries, message=f"mirrored from {self.http.base}/{owner}/{name}@{sha}",
                    tags=[f"upstream-{sha}"], private=False, client="upstream",
                    received=frozenset(e.sha256 for e in entries),
                )
            except InvalidInputError as exc:  # the upstream has it, but it is no adapter the hub accepts
                raise _MissingError(f"cannot be mirrored: {exc.message}") from None
            ns = crud.get_namespace(session, name=owner)
            if ns is None:  # publish made it (or found it) in this transaction
                raise UnavailableError(f"namespace {owner!r} vanished while mirroring")
            if made:
                ns.kind = MIRROR_KIND
                session.add(ns)
            elif ns.kind != MIRROR_KIND:  # made by a local user meanwhile: theirs, not the mirror's
                session.rollback()
                raise _MissingError(f"namespace {owner!r} became a local one; the mirror adds nothing to it")
            audit.record(session, actor=admin.name, action="mirror", target=f"{owner}/{name}@{revision.sha}",
                         client="upstream", detail={"upstream": self.http.base, "revision": sha, "files": len(entries)})
            session.commit()
        log.info("upstream mirror: stored %s/%s@%s from %s", owner, name, sha, self.http.base)


def _parse_info(info: Any, max_bytes: int) -> tuple[str, bool, list[dict[str, Any]]]:
    """The upstream's revision id, privacy and files from its repo info, checked."""
    bad = "the upstream's repo info is malformed"
    if not isinstance(info, dict) or not isinstance(info.get("siblings"), list):
        raise UnavailableError(f"{bad}: no file list")
    sha = info.get("sha")
    if not isinstance(sha, str) or not _SHA1.match(sha):
        raise UnavailableError(f"{bad}: no 40-hex revision id")
    files, total = [], 0
    for item in info["siblings"][:1000]:
        if not isinstance(item, dict) or not isinstance(item.get("rfilename"), str):
            raise UnavailableError(f"{bad}: a file without a name")
        lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
        size = lfs.get("size") if lfs else item.get("size")
        if type(size) is not int or size < 0:
            raise UnavailableError(f"{bad}: {item['rfilename'][:100]!r} has no size (is it an HF-compatible hub?)")
        sha256 = lfs.get("sha256") if lfs else None
        if lfs and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
            raise UnavailableError(f"{bad}: {item['rfilename'][:100]!r} has no valid LFS sha256")
        oid = item.get("blobId") if not lfs and isinstance(item.get("blobId"), str) else None
        files.append({"path": item["rfilename"], "size": size, "sha256": sha256, "oid": oid})
        total += size
    if len(info["siblings"]) > 1000 or total > max_bytes:
        raise _MissingError(f"too large to mirror: {len(info['siblings'])} files, {total} bytes (cap {max_bytes})")
    return sha, info.get("private") is True, files


class _AdvisoryLock:
    """On PostgreSQL, a session advisory lock on the repo's key, so two
    replicas never fetch the same repo at once; elsewhere nothing (SQLite
    serves one process, whose lock is the per-repo ``threading.Lock``)."""

    def __init__(self, engine: Engine, key: str) -> None:
        self.engine, self.key = engine, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        self.conn: Connection | None = None

    def __enter__(self) -> _AdvisoryLock:
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            try:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self.conn.commit()
            except BaseException:
                # A pooled connection would keep the lock forever: end its session instead.
                self.conn.invalidate()
                raise
            finally:
                self.conn.close()
