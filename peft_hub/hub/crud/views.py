"""The native API's answers built from rows: the queries behind each
:mod:`peft_hub.contract` shape, so routes and schemas run none themselves.

The read paths (show, the HF repo info, trees, refs, resolve) go through
:func:`read_repo`: the adapter with every tag's revision in one statement, or
none while :mod:`peft_hub.hub.cache` holds it, and :func:`files_of`, which
reads a revision's files once per process. The rows they return are detached
and shared between requests: read them, never change or ``session.add`` them
(writes load their own with ``get_adapter``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from peft_hub.contract import AdapterSummary, FileInfo, RevisionDetail
from peft_hub.errors import AdapterNotFoundError
from peft_hub.hub import cache
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.crud.adapters import SHA_RE, get_adapter, resolve_revision, revision_files, tags_of
from peft_hub.hub.crud.revisions import lineage
from peft_hub.hub.models import Adapter, Revision, RevisionFile, Tag, name_key


@dataclass
class RepoView:
    """An adapter row and its tags' revisions, as one read saw them."""

    adapter: Adapter
    #: Tag name -> its revision, by name.
    tags: dict[str, Revision]
    #: Revisions found by their full id since (a cached view fills it).
    by_sha: dict[str, Revision] = field(default_factory=dict)

    def tag_shas(self) -> dict[str, str]:
        """Tag name -> revision sha, as ``crud.tags_of`` answers."""
        return {name: revision.sha for name, revision in self.tags.items()}


def names_parents(revision: Revision) -> bool:
    """Whether the revision's detail names its parents, which :func:`revision_detail` filters by who asks."""
    return isinstance((revision.meta or {}).get("lineage"), dict)


def revision_state(revision: Revision) -> Hashable:
    """What of a revision row an answer shows that may change (what ``fsck`` found broken), as a key part."""
    return (revision.id, None if not revision.broken else json.dumps(revision.broken, sort_keys=True, default=str))


def answer_of(hub_cache: cache.HubCache, view: RepoView, key: Hashable, make: Callable[[], Any]) -> cache.Rendered:
    """``make()`` rendered (``cache.render``), once per ``view`` while the
    process keeps it (``HubCache.keep_answer``: the last 1,024 answers of at
    most 64 KiB). ``key`` names what it answers (a route, a revision, a
    page). ``make`` must read nothing but the view, immutable rows (a
    revision's files) and what no caller changes (so nothing the principal
    may or may not see): the view is the repo's cache entry, replaced when a
    write makes it stale or its TTL ends, so the answer is exactly as fresh
    as the view it was made from."""
    found = hub_cache.answer(view, key)
    if found is None:
        found = cache.render(make())
        hub_cache.keep_answer(view, key, found)
    return found


def read_repo(session: Session, *, owner: str, name: str, principal: Principal | None) -> RepoView:
    """The adapter ``owner/name`` with its tags, if the caller may see it; else AdapterNotFoundError.

    The permission check runs on every call, on the (possibly cached) row.
    """
    hub_cache, key = cache.of(session.get_bind()), name_key(owner, name)
    view: RepoView | None = hub_cache.get("repo", key)
    if view is None:
        view = hub_cache.load("repo", key, lambda: _read_view(session, owner=owner, name=name, principal=principal))
    if not can_read(principal, view.adapter):
        raise AdapterNotFoundError(f"adapter {owner}/{name} not found")
    return view


def _read_view(session: Session, *, owner: str, name: str, principal: Principal | None) -> RepoView:
    key = name_key(owner, name)
    view = _load_view(session, key)
    if view is None:  # not here: the pull-through mirror may fetch it (get_adapter asks it)
        get_adapter(session, owner=owner, name=name, principal=principal)
        view = _load_view(session, key)
        if view is None:
            raise AdapterNotFoundError(f"adapter {owner}/{name} not found")
    return view


def _load_view(session: Session, key: str) -> RepoView | None:
    rows = session.exec(
        select(Adapter, Tag.name, Revision)
        .join(Tag, col(Tag.adapter_id) == Adapter.id, isouter=True)
        .join(Revision, col(Revision.id) == Tag.revision_id, isouter=True)
        .where(Adapter.name_key == key)
    ).all()
    if not rows:
        return None
    adapter = rows[0][0]
    tags = {tag: revision for _, tag, revision in sorted(rows, key=lambda r: r[1] or "") if tag is not None}
    _detach(session, adapter, *tags.values())
    return RepoView(adapter=adapter, tags=tags)


def _detach(session: Session, *rows: object) -> None:
    """Take shared rows out of the request's session, so its rollback (which
    expires what it holds) never touches them."""
    for row in rows:
        if row in session:
            session.expunge(row)


def view_revision(session: Session, *, view: RepoView, rev: str | None) -> Revision:
    """``crud.resolve_revision`` on a view: its tags and full ids answered
    without a statement once seen; a prefix is looked up each time."""
    rev = rev or "main"
    found = view.tags.get(rev) or view.by_sha.get(rev)
    if found is not None:
        return found
    pinned = SHA_RE.match(rev) is not None
    if pinned:  # a tag never looks like a full id (crud.validate_tag): most often it is a tag's revision
        found = next((r for r in view.tags.values() if r.sha == rev), None) or session.exec(
            select(Revision).where(Revision.adapter_id == view.adapter.id, Revision.sha == rev)).first()
    if found is None:
        found = resolve_revision(session, adapter=view.adapter, rev=rev)  # and its errors
    if pinned and found.sha == rev:
        _detach(session, found)
        view.by_sha[rev] = found
    return found


def files_of(session: Session, *, revision: Revision) -> Sequence[RevisionFile]:
    """``crud.revision_files``, read once per process: a revision's files never change."""
    hub_cache, key = cache.of(session.get_bind()), ("files", revision.id, revision.sha)
    files = hub_cache.fixed(key)
    if files is None:
        files = tuple(revision_files(session, revision=revision))
        _detach(session, *files)
        hub_cache.keep(key, files)
    return files


def adapter_summary(adapter: Adapter) -> AdapterSummary:
    """The short form used in search results."""
    return AdapterSummary(
        id=f"{adapter.owner}/{adapter.name}", owner=adapter.owner, name=adapter.name, private=adapter.private,
        base_model=adapter.base_model, method=adapter.method, rank=adapter.rank, max_rank=adapter.max_rank,
        size=adapter.total_size, target_modules=adapter.target_modules, downloads=adapter.downloads,
        updated_at=adapter.updated_at.isoformat(), kind=adapter.kind,
    )


def revision_detail(
    session: Session, *, adapter: Adapter, revision: Revision, principal: Principal | None,
    tags: dict[str, str] | None = None, files: Sequence[RevisionFile] | None = None,
) -> RevisionDetail:
    """Everything about one revision of an adapter, as ``principal`` may see it
    (``tags`` and ``files``, when the caller has them, save their queries)."""
    meta = dict(revision.meta or {})
    if names_parents(revision):  # the file's own record names parents' sha256s
        parents = lineage(session, adapter=adapter, revision=revision, principal=principal)["parents"]
        meta["lineage"] = {**meta["lineage"], "parents": parents}
    return RevisionDetail(
        **adapter_summary(adapter).model_dump(),
        revision=revision.sha, message=revision.message, author=revision.author,
        created_at=revision.created_at.isoformat(), meta=meta,
        tags=tags_of(session, adapter=adapter) if tags is None else tags,
        files=[FileInfo(path=f.path, sha256=f.sha256, size=f.size)
               for f in (revision_files(session, revision=revision) if files is None else files)],
        broken=revision.broken,
    )
