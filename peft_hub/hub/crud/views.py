"""The native API's answers built from rows: the queries behind each
:mod:`peft_hub.contract` shape, so routes and schemas run none themselves."""

from __future__ import annotations

from sqlmodel import Session

from peft_hub.contract import AdapterSummary, FileInfo, RevisionDetail
from peft_hub.hub.auth import Principal
from peft_hub.hub.crud.adapters import revision_files, tags_of
from peft_hub.hub.crud.revisions import lineage
from peft_hub.hub.models import Adapter, Revision


def adapter_summary(adapter: Adapter) -> AdapterSummary:
    """The short form used in search results."""
    return AdapterSummary(
        id=f"{adapter.owner}/{adapter.name}", owner=adapter.owner, name=adapter.name, private=adapter.private,
        base_model=adapter.base_model, method=adapter.method, rank=adapter.rank, max_rank=adapter.max_rank,
        size=adapter.total_size, target_modules=adapter.target_modules, downloads=adapter.downloads,
        updated_at=adapter.updated_at.isoformat(), kind=adapter.kind,
    )


def revision_detail(
    session: Session, *, adapter: Adapter, revision: Revision, principal: Principal | None
) -> RevisionDetail:
    """Everything about one revision of an adapter, as ``principal`` may see it."""
    meta = dict(revision.meta or {})
    if isinstance(meta.get("lineage"), dict):  # the file's own record names parents' sha256s
        parents = lineage(session, adapter=adapter, revision=revision, principal=principal)["parents"]
        meta["lineage"] = {**meta["lineage"], "parents": parents}
    return RevisionDetail(
        **adapter_summary(adapter).model_dump(),
        revision=revision.sha, message=revision.message, author=revision.author,
        created_at=revision.created_at.isoformat(), meta=meta, tags=tags_of(session, adapter=adapter),
        files=[FileInfo(path=f.path, sha256=f.sha256, size=f.size) for f in revision_files(session, revision=revision)],
        broken=revision.broken,
    )
