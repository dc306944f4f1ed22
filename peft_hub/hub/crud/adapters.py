"""Adapters, revisions, tags, evals and lineage; and the HF API's empty repos."""

from __future__ import annotations

import math
import re
from typing import Any

from sqlmodel import Session, col, select

from peft_hub.adapter import AdapterMeta, FileEntry
from peft_hub.errors import (
    AdapterNotFoundError, ConflictError, InvalidInputError, NotFoundError, RevisionNotFoundError,
)
from peft_hub.hub import events
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.crud.accounts import ensure_namespace
from peft_hub.hub.models import Adapter, Eval, LineageEdge, Revision, RevisionFile, Tag, name_key, utcnow

# \A and \Z: a "$" would also accept a final newline.
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")
SHA_PREFIX_RE = re.compile(r"\A[0-9a-f]{7,39}\Z")
#: An ambiguous prefix lists at most this many matches.
MAX_PREFIX_MATCHES = 5
TAG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# --- adapters and revisions -------------------------------------------------


def get_adapter(session: Session, *, owner: str, name: str, principal: Principal | None) -> Adapter:
    """The adapter, if it exists and the caller may see it; else AdapterNotFoundError."""
    adapter = find_adapter(session, owner=owner, name=name)
    if adapter is None or not can_read(principal, adapter):
        raise AdapterNotFoundError(f"adapter {owner}/{name} not found")
    return adapter


def find_adapter(session: Session, *, owner: str, name: str) -> Adapter | None:
    """The adapter ``owner/name`` whatever the case it is written in (no access check)."""
    return session.exec(select(Adapter).where(Adapter.name_key == name_key(owner, name))).first()


def resolve_revision(session: Session, *, adapter: Adapter, rev: str | None) -> Revision:
    """A tag name, a full 40-hex revision id, or a unique prefix of 7+ hex digits -> the revision.

    Tags win over prefixes (``validate_tag`` keeps tags from looking like
    full ids); an ambiguous prefix is an error listing the matches.
    """
    rev = rev or "main"
    tag = session.get(Tag, (adapter.id, rev))
    if tag is not None:
        return session.get(Revision, tag.revision_id)
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
    return list(session.exec(select(RevisionFile).where(RevisionFile.revision_id == revision.id).order_by(RevisionFile.path)))


def tags_of(session: Session, *, adapter: Adapter) -> dict[str, str]:
    """Tag name -> revision sha."""
    rows = session.exec(
        select(Tag.name, Revision.sha).join(Revision, Revision.id == Tag.revision_id).where(Tag.adapter_id == adapter.id)
    ).all()
    return dict(sorted(rows))


def list_revisions(session: Session, *, adapter: Adapter) -> list[Revision]:
    return list(session.exec(select(Revision).where(Revision.adapter_id == adapter.id).order_by(col(Revision.id).desc())))


def revision_history(session: Session, *, adapter: Adapter, revision: Revision, offset: int, limit: int) -> list[Revision]:
    """``revision`` and the ones pushed before it, newest first (history is linear)."""
    return list(session.exec(
        select(Revision).where(Revision.adapter_id == adapter.id, Revision.id <= revision.id)
        .order_by(col(Revision.id).desc()).offset(offset).limit(limit)
    ))


def publish_revision(
    session: Session,
    *,
    owner: str,
    name: str,
    entries: list[FileEntry],
    meta: AdapterMeta,
    sha: str,
    author: str,
    message: str = "",
    tags: list[str] = (),
    private: bool | None = None,
    parent: str | None | bool = False,
    principal: Principal | None = None,
) -> tuple[Adapter, Revision, bool]:
    """Record a verified revision and move ``main`` (and ``tags``) to it.

    Args:
        parent: for a commit built on top of ``main`` (the Hugging Face API),
            the revision ``main`` must still point at (None: no revision yet);
            False skips the check. ``main`` is read with a row lock, so two
            such commits cannot both build on the same parent.
        principal: the pusher, whose read access decides which lineage
            parents are linked to adapters in the hub.

    Returns:
        The adapter, the revision, and whether the revision is new.
    """
    owner = ensure_namespace(session, name=owner).name  # the namespace's own spelling
    adapter = find_adapter(session, owner=owner, name=name)
    if adapter is None:
        adapter = Adapter(owner=owner, name=name, name_key=name_key(owner, name), private=bool(private))
        session.add(adapter)
        session.flush()
    elif private is not None:
        adapter.private = private
    if parent is not False:
        main = session.exec(
            select(Revision.sha).join(Tag, Tag.revision_id == Revision.id)
            .where(Tag.adapter_id == adapter.id, Tag.name == "main").with_for_update()
        ).first()
        if main != parent:
            raise ConflictError(f"main moved to {main} while this commit was built on {parent}; retry")
    revision = session.exec(select(Revision).where(Revision.adapter_id == adapter.id, Revision.sha == sha)).first()
    created = revision is None
    if created:
        revision = Revision(adapter_id=adapter.id, sha=sha, author=author, message=message, meta=meta.to_dict())
        session.add(revision)
        session.flush()
        for entry in entries:
            session.add(RevisionFile(revision_id=revision.id, path=entry.path, sha256=entry.sha256, size=entry.size))
        _record_lineage(session, revision=revision, meta=meta, principal=principal)
    for tag in ("main", *tags):
        set_tag(session, adapter=adapter, tag=tag, revision=revision)
    adapter.updated_at = utcnow()
    session.add(adapter)
    session.flush()
    return adapter, revision, created


def _mirror_meta(adapter: Adapter, meta: AdapterMeta) -> None:
    adapter.base_model, adapter.method = meta.base_model, meta.method
    adapter.rank, adapter.max_rank = meta.rank, meta.max_rank
    adapter.total_size, adapter.target_modules = meta.total_size, meta.target_modules
    adapter.description = meta.description


def _record_lineage(session: Session, *, revision: Revision, meta: AdapterMeta, principal: Principal | None) -> None:
    """Store the parents a pushed file names. A parent is linked to an adapter
    only when the pusher may read it and any revision it cites is one of that
    adapter's: a lineage cannot probe names or claim a place in a stranger's
    "used in" list. Everything else is kept as the text the file carries."""
    lineage = meta.lineage if isinstance(meta.lineage, dict) else {}
    parents = lineage.get("parents") if isinstance(lineage.get("parents"), list) else []
    for position, parent in enumerate(p for p in parents[:64] if isinstance(p, dict)):
        ref, cited = str(parent.get("ref", ""))[:300], _text(parent.get("revision"), 40)
        parent_adapter = None
        if ref.count("/") == 1:
            owner, _, pname = ref.partition("/")
            parent_adapter = find_adapter(session, owner=owner, name=pname)
        if parent_adapter is not None and not (
            can_read(principal, parent_adapter)
            and (cited is None or session.exec(select(Revision.id).where(
                Revision.adapter_id == parent_adapter.id, Revision.sha == cited)).first() is not None)
        ):
            parent_adapter = None
        weight = parent.get("weight")
        session.add(LineageEdge(
            child_revision_id=revision.id, position=position, parent_ref=ref,
            parent_adapter_id=parent_adapter.id if parent_adapter else None,
            parent_revision=cited, parent_sha256=_text(parent.get("sha256"), 64),
            weight=float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool)
            and math.isfinite(weight) else None,
            method=str(lineage.get("method", ""))[:32],
        ))


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def validate_tag(tag: str) -> str:
    """Tags are short names that cannot be mistaken for revision ids."""
    if not isinstance(tag, str) or not TAG_RE.match(tag) or SHA_RE.match(tag) or ".." in tag:
        shown = repr(tag) if len(repr(tag)) <= 80 else repr(tag)[:79] + "…"
        raise InvalidInputError(f"invalid tag {shown}: use up to 64 letters, digits, '.', '_' or '-'")
    return tag


def set_tag(session: Session, *, adapter: Adapter, tag: str, revision: Revision) -> None:
    row = session.get(Tag, (adapter.id, tag))
    events.tag_moved(session, adapter=adapter, tag=tag, revision=revision, previous_id=row.revision_id if row else None)
    if row is None:
        session.add(Tag(adapter_id=adapter.id, name=tag, revision_id=revision.id))
    else:
        row.revision_id, row.updated_at = revision.id, utcnow()
        session.add(row)
    if tag == "main":
        _mirror_meta(adapter, AdapterMeta(**revision.meta))
        session.add(adapter)


def delete_tag(session: Session, *, adapter: Adapter, tag: str) -> None:
    if tag == "main":
        raise ConflictError("the 'main' tag cannot be deleted; it always points at the newest push")
    row = session.get(Tag, (adapter.id, tag))
    if row is None:
        raise RevisionNotFoundError(f"tag {tag!r} not found")
    events.tag_deleted(session, adapter=adapter, tag=tag, previous_id=row.revision_id)
    session.delete(row)


def set_visibility(session: Session, *, adapter: Adapter, private: bool) -> None:
    """Make an adapter private or public; its revisions and blobs are unchanged."""
    adapter.private = private
    session.add(adapter)
    session.flush()


def delete_adapter(session: Session, *, adapter: Adapter) -> None:
    """Delete an adapter and its revisions; blobs go at the next gc."""
    events.adapter_deleted(session, adapter=adapter)
    revisions = [r.id for r in list_revisions(session, adapter=adapter)]
    for model, column in ((Tag, Tag.adapter_id),):
        for row in session.exec(select(model).where(column == adapter.id)):
            session.delete(row)
    session.flush()
    for model, column in ((RevisionFile, RevisionFile.revision_id), (Eval, Eval.revision_id), (LineageEdge, LineageEdge.child_revision_id)):
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
    session.exec(  # an UPDATE, so concurrent pulls do not lose counts
        Adapter.__table__.update().where(Adapter.id == adapter.id).values(downloads=Adapter.downloads + 1)
    )


# --- evals and lineage ------------------------------------------------------


def add_evals(session: Session, *, revision: Revision, evals: list[dict[str, Any]], added_by: str) -> list[Eval]:
    rows = [Eval(revision_id=revision.id, added_by=added_by, **e) for e in evals]
    session.add_all(rows)
    session.flush()
    return rows


def delete_eval(session: Session, *, adapter: Adapter, eval_id: int) -> None:
    """Delete one eval of one of ``adapter``'s revisions; NotFoundError otherwise."""
    row = session.exec(
        select(Eval).join(Revision, Revision.id == Eval.revision_id)
        .where(Eval.id == eval_id, Revision.adapter_id == adapter.id)
    ).first()
    if row is None:
        raise NotFoundError(f"eval {eval_id} not found in {adapter.owner}/{adapter.name}")
    session.delete(row)


def list_evals(session: Session, *, adapter: Adapter) -> list[tuple[Eval, str]]:
    """Every eval of every revision, oldest first, with the revision sha."""
    return list(session.exec(
        select(Eval, Revision.sha).join(Revision, Revision.id == Eval.revision_id)
        .where(Revision.adapter_id == adapter.id).order_by(Eval.id)
    ).all())


def lineage(session: Session, *, adapter: Adapter, revision: Revision, principal: Principal | None) -> dict[str, list[dict[str, Any]]]:
    """The revision's parents and the adapters composed from this one, as
    ``principal`` may see them: a parent it cannot read shows only the name
    the file carries (no revision, no sha256, nothing that tells a private
    adapter from a missing one), and children it cannot read are left out."""
    parents = []
    for edge in session.exec(select(LineageEdge).where(LineageEdge.child_revision_id == revision.id).order_by(LineageEdge.position)):
        parent = session.get(Adapter, edge.parent_adapter_id) if edge.parent_adapter_id else None
        seen = parent is not None and can_read(principal, parent)
        parents.append({
            "ref": edge.parent_ref, "weight": edge.weight, "method": edge.method, "in_hub": seen,
            "revision": edge.parent_revision if seen else None, "sha256": edge.parent_sha256 if seen else None,
        })
    children = session.exec(
        select(Adapter, Revision.sha, LineageEdge.weight, LineageEdge.method)
        .join(Revision, Revision.id == LineageEdge.child_revision_id)
        .join(Adapter, Adapter.id == Revision.adapter_id)
        .where(LineageEdge.parent_adapter_id == adapter.id)
    ).all()
    return {
        "parents": parents,
        "children": [
            {"id": f"{child.owner}/{child.name}", "revision": sha, "weight": w, "method": m}
            for child, sha, w, m in children if can_read(principal, child)
        ],
    }


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
