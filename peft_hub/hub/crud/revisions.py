"""Recording a pushed revision, with its lineage; and evals.

A revision is written once, by :func:`publish_revision`, which also moves
``main``; the tags and lookups it uses are :mod:`peft_hub.hub.crud.adapters`'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from peft_hub.adapter import FileEntry
from peft_hub.errors import AdapterNotFoundError, ConflictError, NotFoundError
from peft_hub.hub.auth import Principal, can_read
from peft_hub.hub.crud.accounts import ensure_namespace
from peft_hub.hub.crud.adapters import find_adapter, find_adapter_locked, lock_adapter, point_tag
from peft_hub.hub.models import Adapter, Eval, LineageEdge, Revision, RevisionFile, Tag, name_key, pk, utcnow
from peft_hub.repo_kinds import Meta, kind_mismatch, kind_of


def publish_revision(
    session: Session,
    *,
    owner: str,
    name: str,
    entries: list[FileEntry],
    meta: Meta,
    sha: str,
    author: str,
    message: str = "",
    tags: Sequence[str] = (),
    private: bool | None = None,
    parent: str | None | bool = False,
    principal: Principal | None = None,
    adapter_id: int | None = None,
) -> tuple[Adapter, Revision, bool]:
    """Record a verified revision and move ``main`` (and ``tags``) to it.

    The repo's row is locked first (:func:`lock_adapter`), so a publish and a
    delete or tag move of the same repo wait for each other.

    Args:
        parent: for a commit built on top of ``main`` (the Hugging Face API),
            the revision ``main`` must still point at (None: no revision yet);
            False skips the check. ``main`` is read under the repo's lock, so
            two such commits cannot both build on the same parent.
        adapter_id: the existing repo this publish was planned against (an HF
            commit, which needs one): if it has been deleted since, the
            publish is refused instead of creating the repo anew.
        principal: the pusher, whose read access decides which lineage
            parents are linked to adapters in the hub.

    Returns:
        The adapter, the revision, and whether the revision is new.
    """
    owner = ensure_namespace(session, name=owner).name  # the namespace's own spelling
    adapter = find_adapter_locked(session, owner=owner, name=name)
    if adapter_id is not None and (adapter is None or adapter.id != adapter_id):
        raise AdapterNotFoundError(f"adapter {owner}/{name} not found (it was deleted while this commit arrived)")
    kind = kind_of(meta)
    if adapter is None:
        adapter = Adapter(owner=owner, name=name, name_key=name_key(owner, name), private=bool(private), kind=kind)
        session.add(adapter)
        session.flush()
    elif private is not None:
        adapter.private = private
    if adapter.kind != kind:  # an empty repo (create_repo) takes the kind of its first push
        if session.get(Tag, (adapter.id, "main")) is not None:
            raise kind_mismatch(f"{adapter.owner}/{adapter.name}", adapter.kind, kind)
        adapter.kind = kind
    if parent is not False:
        main = session.exec(
            select(Revision.sha).join(Tag, col(Tag.revision_id) == Revision.id)
            .where(Tag.adapter_id == adapter.id, Tag.name == "main")
        ).first()
        if main != parent:
            raise ConflictError(f"main moved to {main} while this commit was built on {parent}; retry")
    revision = session.exec(select(Revision).where(Revision.adapter_id == adapter.id, Revision.sha == sha)).first()
    created = revision is None
    if revision is None:
        revision = Revision(adapter_id=pk(adapter), sha=sha, author=author, message=message, meta=meta.to_dict())
        session.add(revision)
        session.flush()
        for entry in entries:
            session.add(RevisionFile(revision_id=pk(revision), path=entry.path, sha256=entry.sha256, size=entry.size))
        _record_lineage(session, revision=revision, meta=meta, principal=principal)
    for tag in ("main", *tags):  # the repo is locked (find_adapter_locked) or new in this transaction
        point_tag(session, adapter=adapter, tag=tag, revision=revision)
    adapter.updated_at = utcnow()
    session.add(adapter)
    session.flush()
    return adapter, revision, created


def _record_lineage(session: Session, *, revision: Revision, meta: Meta, principal: Principal | None) -> None:
    """Store the parents a pushed file names. A parent is linked to an adapter
    only when the pusher may read it and any revision it cites is one of that
    adapter's: a lineage cannot probe names or claim a place in a stranger's
    "used in" list. Everything else is kept as the text the file carries."""
    lineage = meta.lineage if isinstance(meta.lineage, dict) else {}
    listed = lineage.get("parents")
    parents = listed if isinstance(listed, list) else []
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
            child_revision_id=pk(revision), position=position, parent_ref=ref,
            parent_adapter_id=parent_adapter.id if parent_adapter else None,
            parent_revision=cited, parent_sha256=_text(parent.get("sha256"), 64),
            weight=float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool)
            and math.isfinite(weight) else None,
            method=str(lineage.get("method", ""))[:32],
        ))


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def add_evals(
    session: Session, *, adapter: Adapter, revision: Revision, evals: list[dict[str, Any]], added_by: str
) -> list[Eval]:
    """Attach evals to one of ``adapter``'s revisions."""
    lock_adapter(session, adapter)
    rows = [Eval(revision_id=pk(revision), added_by=added_by, **e) for e in evals]
    session.add_all(rows)
    session.flush()
    return rows


def delete_eval(session: Session, *, adapter: Adapter, eval_id: int) -> None:
    """Delete one eval of one of ``adapter``'s revisions; NotFoundError otherwise."""
    adapter = lock_adapter(session, adapter)
    row = session.exec(
        select(Eval).join(Revision, col(Revision.id) == Eval.revision_id)
        .where(Eval.id == eval_id, Revision.adapter_id == adapter.id)
    ).first()
    if row is None:
        raise NotFoundError(f"eval {eval_id} not found in {adapter.owner}/{adapter.name}")
    session.delete(row)


def list_evals(session: Session, *, adapter: Adapter) -> list[tuple[Eval, str]]:
    """Every eval of every revision, oldest first, with the revision sha."""
    return list(session.exec(
        select(Eval, Revision.sha).join(Revision, col(Revision.id) == Eval.revision_id)
        .where(Revision.adapter_id == adapter.id).order_by(col(Eval.id))
    ).all())


def lineage(
    session: Session, *, adapter: Adapter, revision: Revision, principal: Principal | None
) -> dict[str, list[dict[str, Any]]]:
    """The revision's parents and the adapters composed from this one, as
    ``principal`` may see them: a parent it cannot read shows only the name
    the file carries (no revision, no sha256, nothing that tells a private
    adapter from a missing one), and children it cannot read are left out."""
    parents = []
    edges = session.exec(
        select(LineageEdge).where(LineageEdge.child_revision_id == revision.id).order_by(col(LineageEdge.position))
    )
    for edge in edges:
        parent = session.get(Adapter, edge.parent_adapter_id) if edge.parent_adapter_id else None
        seen = parent is not None and can_read(principal, parent)
        parents.append({
            "ref": edge.parent_ref, "weight": edge.weight, "method": edge.method, "in_hub": seen,
            "revision": edge.parent_revision if seen else None, "sha256": edge.parent_sha256 if seen else None,
        })
    children = session.exec(
        select(Adapter, Revision.sha, LineageEdge.weight, LineageEdge.method)
        .join(Revision, col(Revision.id) == LineageEdge.child_revision_id)
        .join(Adapter, col(Adapter.id) == Revision.adapter_id)
        .where(LineageEdge.parent_adapter_id == adapter.id)
    ).all()
    return {
        "parents": parents,
        "children": [
            {"id": f"{child.owner}/{child.name}", "revision": sha, "weight": w, "method": m}
            for child, sha, w, m in children if can_read(principal, child)
        ],
    }
