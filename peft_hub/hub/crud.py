"""Database reads and writes, as keyword-only functions of a session.

Nothing here commits: the request's session commits once when the route
returns, so a publish (revision, files, tags, lineage) lands whole or not at all.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, true
from sqlmodel import Session, col, select

from peft_hub.adapter import AdapterMeta, FileEntry
from peft_hub.errors import (
    AdapterNotFoundError, ConflictError, InvalidInputError, NotFoundError, RevisionNotFoundError,
)
from peft_hub.hub.auth import Principal, as_utc, can_read, hash_token, is_expired, lookup_of, new_token
from peft_hub.hub.models import (
    Adapter, Eval, LineageEdge, Membership, Namespace, Revision, RevisionFile, Tag, Token, WebSession, utcnow,
)

# \A and \Z: a "$" would also accept a final newline.
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")
TAG_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SORTS = {"updated": Adapter.updated_at, "downloads": Adapter.downloads, "name": Adapter.name, "rank": Adapter.rank, "size": Adapter.total_size}


# --- namespaces and tokens --------------------------------------------------


def get_namespace(session: Session, *, name: str) -> Namespace | None:
    return session.exec(select(Namespace).where(Namespace.name == name)).first()


def ensure_namespace(session: Session, *, name: str, kind: str = "user", is_admin: bool = False) -> Namespace:
    """The namespace ``name``, created when missing."""
    ns = get_namespace(session, name=name)
    if ns is None:
        ns = Namespace(name=name, kind=kind, is_admin=is_admin)
        session.add(ns)
        session.flush()
    return ns


def create_token(
    session: Session, *, user: Namespace, scope: str, namespaces: list[str] | None = None, token: str | None = None
) -> str:
    """Store a new token for ``user`` and return its plaintext (shown once)."""
    return issue_token(session, user=user, scope=scope, namespaces=namespaces, token=token)[1]


def issue_token(
    session: Session, *, user: Namespace, scope: str, namespaces: list[str] | None = None, token: str | None = None,
    name: str = "", expires_at: datetime | None = None,
) -> tuple[Token, str]:
    """Store a new token for ``user``; return its row and its plaintext (shown once)."""
    token = token or new_token()
    lookup = lookup_of(token)
    if lookup is None:
        raise InvalidInputError("tokens start with 'phub_' and are at least 33 characters long")
    row = Token(user_id=user.id, lookup=lookup, token_hash=hash_token(token), scope=scope, namespaces=namespaces,
                name=name, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session, *, user: Namespace) -> list[Token]:
    """The user's tokens, oldest first."""
    return list(session.exec(select(Token).where(Token.user_id == user.id).order_by(Token.id)))


def get_token(session: Session, *, token_id: int) -> Token | None:
    return session.get(Token, token_id)


def revoke_token(session: Session, *, token: Token) -> None:
    """Delete a token and every web session signed in with it."""
    for web in session.exec(select(WebSession).where(WebSession.token_id == token.id)):
        session.delete(web)
    session.flush()
    session.delete(token)
    session.flush()


def create_web_session(session: Session, *, token: Token, expires_at: datetime) -> tuple[WebSession, str]:
    """A server-side web session acting with ``token``; returns it and the
    random id for the cookie (only its sha256 is stored). Expired sessions
    are swept out on the way."""
    now = utcnow()
    for stale in session.exec(select(WebSession).where(WebSession.expires_at <= now)):
        session.delete(stale)
    if token.expires_at is not None:
        expires_at = min(expires_at, as_utc(token.expires_at))
    raw = secrets.token_urlsafe(32)
    web = WebSession(id_hash=hash_token(raw), token_id=token.id, csrf=secrets.token_urlsafe(32), expires_at=expires_at)
    session.add(web)
    session.flush()
    return web, raw


def resolve_web_session(session: Session, *, raw_id: str) -> tuple[WebSession, Token] | None:
    """The live session for a cookie's id and its token; None when the id is
    unknown, the session expired, or its token expired or was revoked.

    Read-only, so it can run before ``auth.touch``; expired rows are swept by
    :func:`create_web_session`.
    """
    if not raw_id or len(raw_id) > 128:
        return None
    web = session.get(WebSession, hash_token(raw_id))
    if web is None or as_utc(web.expires_at) <= utcnow():
        return None
    token = session.get(Token, web.token_id)
    if token is None or is_expired(token):
        return None
    return web, token


def add_member(session: Session, *, org: str, user: str) -> Namespace:
    """Make ``user`` a member of organisation ``org`` (both created if new)."""
    org_ns = ensure_namespace(session, name=org, kind="org")
    if org_ns.kind != "org":
        raise ConflictError(f"{org!r} is a user, not an organisation")
    user_ns = ensure_namespace(session, name=user)
    if user_ns.kind != "user":
        raise ConflictError(f"{user!r} is an organisation, not a user")
    if session.get(Membership, (user_ns.id, org_ns.id)) is None:
        session.add(Membership(user_id=user_ns.id, org_id=org_ns.id))
        session.flush()
    return org_ns


def count_namespaces(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Namespace)).one()


# --- adapters and revisions -------------------------------------------------


def get_adapter(session: Session, *, owner: str, name: str, principal: Principal | None) -> Adapter:
    """The adapter, if it exists and the caller may see it; else AdapterNotFoundError."""
    adapter = session.exec(select(Adapter).where(Adapter.owner == owner, Adapter.name == name)).first()
    if adapter is None or not can_read(principal, adapter):
        raise AdapterNotFoundError(f"adapter {owner}/{name} not found")
    return adapter


def resolve_revision(session: Session, *, adapter: Adapter, rev: str | None) -> Revision:
    """A tag name or a full 40-hex revision id -> the revision."""
    rev = rev or "main"
    tag = session.get(Tag, (adapter.id, rev))
    if tag is not None:
        return session.get(Revision, tag.revision_id)
    if SHA_RE.match(rev):
        found = session.exec(select(Revision).where(Revision.adapter_id == adapter.id, Revision.sha == rev)).first()
        if found is not None:
            return found
    raise RevisionNotFoundError(f"revision {rev!r} not found in {adapter.owner}/{adapter.name}")


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
    ensure_namespace(session, name=owner)
    adapter = session.exec(select(Adapter).where(Adapter.owner == owner, Adapter.name == name)).first()
    if adapter is None:
        adapter = Adapter(owner=owner, name=name, private=bool(private))
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
            parent_adapter = session.exec(select(Adapter).where(Adapter.owner == owner, Adapter.name == pname)).first()
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
    session.delete(row)


def delete_adapter(session: Session, *, adapter: Adapter) -> None:
    """Delete an adapter and its revisions; blobs go at the next gc."""
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


# --- search -----------------------------------------------------------------


def _visible(principal: Principal | None):  # noqa: ANN202
    """The adapters ``principal`` may see: public ones, and private ones it
    ``owns`` (the same rule as ``auth.can_read``; limits bind admins too)."""
    if principal is None:
        return Adapter.private == False  # noqa: E712
    if principal.is_admin:
        if principal.namespaces is None:
            return true()
        owners = set(principal.namespaces)
    else:
        owners = {principal.user.name, *principal.orgs}
        if principal.namespaces is not None:
            owners &= set(principal.namespaces)
    return or_(Adapter.private == False, col(Adapter.owner).in_(owners))  # noqa: E712


def search_filters(
    *,
    principal: Principal | None,
    q: str | None = None,
    base_model: str | None = None,
    method: str | None = None,
    min_rank: int | None = None,
    max_rank: int | None = None,
    target_module: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
) -> list[Any]:
    """The WHERE clauses shared by search, facets and the web catalog."""
    clauses: list[Any] = [_visible(principal), Adapter.method.is_not(None)]
    if q:
        like = f"%{q.lower()}%"
        clauses.append(or_(
            func.lower(Adapter.name).like(like), func.lower(Adapter.owner).like(like),
            func.lower(Adapter.base_model).like(like), func.lower(Adapter.description).like(like),
        ))
    if base_model:
        clauses.append(Adapter.base_model == base_model)
    if method:
        clauses.append(func.upper(Adapter.method) == method.upper())
    if min_rank is not None:
        clauses.append(Adapter.max_rank >= min_rank)
    if max_rank is not None:
        clauses.append(Adapter.rank <= max_rank)
    if owner:
        clauses.append(Adapter.owner == owner)
    if tag:
        clauses.append(col(Adapter.id).in_(select(Tag.adapter_id).where(Tag.name == tag)))
    if target_module:
        # JSON arrays are stored as text on both backends; match the quoted element.
        from sqlalchemy import String, cast

        clauses.append(cast(Adapter.target_modules, String).like(f'%"{target_module}"%'))
    return clauses


def search_adapters(
    session: Session, *, clauses: list[Any], sort: str = "updated", order: str = "desc", page: int = 1, per_page: int = 20
) -> tuple[list[Adapter], int]:
    """One page of adapters matching ``clauses``, and the total count."""
    if sort not in SORTS:
        raise InvalidInputError(f"sort must be one of {', '.join(SORTS)}")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    column = SORTS[sort]
    ordering = [column.asc() if order == "asc" else column.desc(), Adapter.id.asc()]
    total = session.exec(select(func.count()).select_from(Adapter).where(*clauses)).one()
    items = session.exec(
        select(Adapter).where(*clauses).order_by(*ordering).offset((page - 1) * per_page).limit(per_page)
    ).all()
    return list(items), total


def facets(session: Session, *, clauses: list[Any]) -> dict[str, list[tuple[str, int]]]:
    """Counts per base model, method and owner among matching adapters."""
    out = {}
    for name, column in (("base_model", Adapter.base_model), ("method", Adapter.method), ("owner", Adapter.owner)):
        rows = session.exec(
            select(column, func.count()).where(*clauses).group_by(column).order_by(func.count().desc(), column)
        ).all()
        out[name] = [(value, count) for value, count in rows if value]
    return out


def referenced_blobs(session: Session) -> set[str]:
    return set(session.exec(select(RevisionFile.sha256).distinct()).all())


# --- web catalog ------------------------------------------------------------


def main_revision_evals(session: Session, *, adapter_ids: list[int]) -> dict[int, list[Eval]]:
    """The evals of each adapter's ``main`` revision, newest first (for the catalog's headline eval)."""
    if not adapter_ids:
        return {}
    rows = session.exec(
        select(Tag.adapter_id, Eval).join(Eval, Eval.revision_id == Tag.revision_id)
        .where(Tag.name == "main", col(Tag.adapter_id).in_(adapter_ids)).order_by(col(Eval.id).desc())
    ).all()
    out: dict[int, list[Eval]] = {}
    for adapter_id, row in rows:
        out.setdefault(adapter_id, []).append(row)
    return out


# --- Hugging Face-compatible API --------------------------------------------


def create_adapter(session: Session, *, owner: str, name: str, private: bool = False) -> Adapter:
    """An adapter with no revision yet, as ``create_repo`` makes; ConflictError if it exists."""
    ensure_namespace(session, name=owner)
    if session.exec(select(Adapter).where(Adapter.owner == owner, Adapter.name == name)).first() is not None:
        raise ConflictError(f"adapter {owner}/{name} already exists")
    adapter = Adapter(owner=owner, name=name, private=private)
    session.add(adapter)
    session.flush()
    return adapter
