"""Adapters, revisions and tags: lookups, tags, visibility, deletion; and the HF API's empty repos.

Recording a pushed revision (with its lineage) and evals are in
:mod:`peft_hub.hub.crud.revisions`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, SQLModel, col, select

from peft_hub.errors import AdapterNotFoundError, ConflictError, InvalidInputError, RevisionNotFoundError
from peft_hub.hub import events
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.crud.accounts import ensure_namespace
from peft_hub.hub.models import Adapter, Eval, LineageEdge, Revision, RevisionFile, Tag, name_key, pk, utcnow
from peft_hub.repo_kinds import Meta, meta_from_dict

# \A and \Z: a "$" would also accept a final newline.
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")
SHA_PREFIX_RE = re.compile(r"\A[0-9a-f]{7,39}\Z")
#: An ambiguous prefix lists at most this many matches.
MAX_PREFIX_MATCHES = 5
TAG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


#: Asked, in order, for a repo a lookup did not find. ``upstream.attach``
#: registers the pull-through mirror here, so crud never imports the module
#: that publishes through it.
MISS_HOOKS: list[Callable[..., Adapter | None]] = []

# --- adapters and revisions -------------------------------------------------


def get_adapter(session: Session, *, owner: str, name: str, principal: Principal | None) -> Adapter:
    """The adapter, if it exists and the caller may see it; else AdapterNotFoundError."""
    adapter = find_adapter(session, owner=owner, name=name)
    for hook in MISS_HOOKS:  # the pull-through mirror's (off unless PEFT_HUB_UPSTREAM is set)
        if adapter is not None:
            break
        adapter = hook(session, owner=owner, name=name)
    if adapter is None or not can_read(principal, adapter):
        raise AdapterNotFoundError(f"adapter {owner}/{name} not found")
    return adapter


def find_adapter(session: Session, *, owner: str, name: str) -> Adapter | None:
    """The adapter ``owner/name`` whatever the case it is written in (no access check)."""
    return session.exec(select(Adapter).where(Adapter.name_key == name_key(owner, name))).first()


def lock_adapter(session: Session, adapter: Adapter) -> Adapter:
    """Take ``adapter``'s write lock and re-read it; AdapterNotFoundError if
    it was deleted since it was loaded.

    Every change to an existing repo (tags, evals, visibility, a publish, a
    delete) starts here, before it writes anything: writers to one repo queue
    on one lock, in one order, and each then works from the repo as it is,
    never from the copy it loaded before it waited.
    """
    locked = _locked(session, Adapter.id == adapter.id)
    if locked is None:
        raise AdapterNotFoundError(f"adapter {adapter.owner}/{adapter.name} not found (it was deleted meanwhile)")
    return locked


def find_adapter_locked(session: Session, *, owner: str, name: str) -> Adapter | None:
    """:func:`find_adapter`, with the row's write lock (see :func:`lock_adapter`)."""
    return _locked(session, Adapter.name_key == name_key(owner, name))


def _locked(session: Session, where: Any) -> Adapter | None:
    """PostgreSQL: the row's ``FOR UPDATE`` lock (a row deleted while this
    waited is not found). SQLite: the database's write lock, taken now
    (``BEGIN IMMEDIATE``) unless this transaction has written already."""
    query = select(Adapter).where(where).execution_options(populate_existing=True)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    elif not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    return session.exec(query).first()


def resolve_revision(session: Session, *, adapter: Adapter, rev: str | None) -> Revision:
    """A tag name, a full 40-hex revision id, or a unique prefix of 7+ hex digits -> the revision.

    Tags win over prefixes (``validate_tag`` keeps tags from looking like
    full ids); an ambiguous prefix is an error listing the matches.
    """
    rev = rev or "main"
    tag = session.get(Tag, (adapter.id, rev))
    if tag is not None:
        return session.get_one(Revision, tag.revision_id)  # the foreign key says it exists
    where = f"{adapter.owner}/{adapter.name}"
    if SHA_RE.match(rev):
        found = session.exec(select(Revision).where(Revision.adapter_id == adapter.id, Revision.sha == rev)).first()
        if found is not None:
            return found
    elif SHA_PREFIX_RE.match(rev):  # only hex digits reach the LIKE pattern, so no wildcard can
        matches = list(session.exec(
            select(Revision).where(Revision.adapter_id == adapter.id, col(Revision.sha).startswith(rev))
            .order_by(Revision.sha).limit(MAX_PREFIX_MATCHES + 1)
        ))
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(m.sha[:12] for m in matches[:MAX_PREFIX_MATCHES])
            more = " and more" if len(matches) > MAX_PREFIX_MATCHES else ""
            raise InvalidInputError(f"revision {rev!r} is ambiguous in {where}: it starts {shown}{more}; "
                                    "give more digits")
    raise RevisionNotFoundError(f"revision {rev!r} not found in {where}")


def revision_files(session: Session, *, revision: Revision) -> list[RevisionFile]:
    return list(session.exec(
        select(RevisionFile).where(RevisionFile.revision_id == revision.id).order_by(RevisionFile.path)
    ))


def tags_of(session: Session, *, adapter: Adapter) -> dict[str, str]:
    """Tag name -> revision sha."""
    rows = session.exec(
        select(Tag.name, Revision.sha).join(Revision, col(Revision.id) == Tag.revision_id)
        .where(Tag.adapter_id == adapter.id)
    ).all()
    return dict(sorted(rows))


def list_revisions(session: Session, *, adapter: Adapter) -> list[Revision]:
    return list(session.exec(
        select(Revision).where(Revision.adapter_id == adapter.id).order_by(col(Revision.id).desc())
    ))


def revision_history(
    session: Session, *, adapter: Adapter, revision: Revision, offset: int, limit: int
) -> list[Revision]:
    """``revision`` and the ones pushed before it, newest first (history is linear)."""
    return list(session.exec(
        select(Revision).where(Revision.adapter_id == adapter.id, col(Revision.id) <= revision.id)
        .order_by(col(Revision.id).desc()).offset(offset).limit(limit)
    ))


def _mirror_meta(adapter: Adapter, meta: Meta) -> None:
    adapter.base_model, adapter.method = meta.base_model, meta.method
    adapter.rank, adapter.max_rank = meta.rank, meta.max_rank
    adapter.total_size, adapter.target_modules = meta.total_size, meta.target_modules
    adapter.description = meta.description


def validate_tag(tag: str) -> str:
    """Tags are short names that cannot be mistaken for revision ids."""
    if not isinstance(tag, str) or not TAG_RE.match(tag) or SHA_RE.match(tag) or ".." in tag:
        shown = repr(tag) if len(repr(tag)) <= 80 else repr(tag)[:79] + "…"
        raise InvalidInputError(f"invalid tag {shown}: use up to 64 letters, digits, '.', '_' or '-'")
    return tag


def set_tag(session: Session, *, adapter: Adapter, tag: str, revision: Revision, new: bool = False) -> None:
    """Point ``tag`` at ``revision``; with ``new``, only if the tag does not exist yet (checked under the
    repo's lock, so of two creations of one tag at once, one is a ConflictError)."""
    point_tag(session, adapter=lock_adapter(session, adapter), tag=tag, revision=revision, new=new)


def point_tag(session: Session, *, adapter: Adapter, tag: str, revision: Revision, new: bool = False) -> None:
    """:func:`set_tag` for a caller that holds the repo's lock already (a publish)."""
    row = session.get(Tag, (adapter.id, tag))
    if new and row is not None:
        raise ConflictError(
            f"tag {tag!r} already exists in {adapter.owner}/{adapter.name}; move it with `peft-hub tag`"
        )
    events.tag_moved(session, adapter=adapter, tag=tag, revision=revision, previous_id=row.revision_id if row else None)
    if row is None:
        session.add(Tag(adapter_id=pk(adapter), name=tag, revision_id=pk(revision)))
    else:
        row.revision_id, row.updated_at = pk(revision), utcnow()
        session.add(row)
    if tag == "main":
        _mirror_meta(adapter, meta_from_dict(revision.meta))
        session.add(adapter)


def delete_tag(session: Session, *, adapter: Adapter, tag: str) -> None:
    if tag == "main":
        raise ConflictError("the 'main' tag cannot be deleted; it always points at the newest push")
    adapter = lock_adapter(session, adapter)
    row = session.get(Tag, (adapter.id, tag))
    if row is None:
        raise RevisionNotFoundError(f"tag {tag!r} not found")
    events.tag_deleted(session, adapter=adapter, tag=tag, previous_id=row.revision_id)
    session.delete(row)


def set_visibility(session: Session, *, adapter: Adapter, private: bool) -> None:
    """Make an adapter private or public; its revisions and blobs are unchanged."""
    adapter = lock_adapter(session, adapter)
    adapter.private = private
    session.add(adapter)
    session.flush()


def delete_adapter(session: Session, *, adapter: Adapter) -> None:
    """Delete an adapter and its revisions; blobs go at the next gc."""
    adapter = lock_adapter(session, adapter)  # a second delete of it waits here, then finds it gone
    events.adapter_deleted(session, adapter=adapter)
    revisions = [r.id for r in list_revisions(session, adapter=adapter)]
    for tag in session.exec(select(Tag).where(Tag.adapter_id == adapter.id)):
        session.delete(tag)
    session.flush()
    by_revision: tuple[tuple[type[SQLModel], Any], ...] = (
        (RevisionFile, RevisionFile.revision_id), (Eval, Eval.revision_id),
        (LineageEdge, LineageEdge.child_revision_id),
    )
    for model, column in by_revision:
        for row in session.exec(select(model).where(col(column).in_(revisions))):
            session.delete(row)
    for edge in session.exec(select(LineageEdge).where(LineageEdge.parent_adapter_id == adapter.id)):
        edge.parent_adapter_id = None
        session.add(edge)
    session.flush()
    for rid in revisions:
        session.delete(session.get(Revision, rid))
    session.flush()
    session.delete(adapter)


def count_download(session: Session, *, adapter: Adapter) -> None:
    table = Adapter.__table__  # type: ignore[attr-defined]  # SQLModel adds __table__ at class creation
    session.exec(  # an UPDATE, so concurrent pulls do not lose counts
        table.update().where(Adapter.id == adapter.id).values(downloads=Adapter.downloads + 1)
    )


# --- Hugging Face-compatible API --------------------------------------------


def create_adapter(session: Session, *, owner: str, name: str, private: bool = False) -> Adapter:
    """An adapter with no revision yet, as ``create_repo`` makes; ConflictError if it exists."""
    owner = ensure_namespace(session, name=owner).name
    existing = find_adapter(session, owner=owner, name=name)
    if existing is not None:
        same = f"{existing.owner}/{existing.name}" == f"{owner}/{name}"
        raise ConflictError(f"adapter {owner}/{name} already exists"
                            + ("" if same else f" as {existing.owner}/{existing.name} (names ignore case)"))
    adapter = Adapter(owner=owner, name=name, name_key=name_key(owner, name), private=private)
    session.add(adapter)
    session.flush()
    return adapter
