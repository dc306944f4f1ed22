"""Request bodies and the JSON shapes the native API returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from peft_hub.adapter import FileEntry
from peft_hub.hub import crud
from peft_hub.hub.models import Adapter, Revision
from sqlmodel import Session


class FileSpec(BaseModel):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.sha256)


class PreuploadRequest(BaseModel):
    files: list[FileSpec] = Field(max_length=64)


class CommitRequest(BaseModel):
    files: list[FileSpec] = Field(max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=16)
    private: bool | None = None
    message: str = Field(default="", max_length=4000)


class TagRequest(BaseModel):
    revision: str


class EvalIn(BaseModel):
    metric: str = Field(min_length=1, max_length=128)
    value: float
    dataset: str = Field(min_length=1, max_length=256)
    dataset_version: str | None = Field(default=None, max_length=128)
    split: str | None = Field(default=None, max_length=64)
    extra: dict[str, Any] = Field(default_factory=dict)


class EvalsRequest(BaseModel):
    revision: str = "main"
    evals: list[EvalIn] = Field(min_length=1, max_length=1000)


class TokenRequest(BaseModel):
    scope: Literal["read", "write", "admin"] = "read"
    #: The user the token acts as (created if new); default: the caller.
    namespace: str | None = None
    #: Restrict the token to these namespaces (default: all the user may use).
    limit: list[str] | None = Field(default=None, max_length=32)


class GcRequest(BaseModel):
    grace_seconds: int | None = Field(default=None, ge=0)
    dry_run: bool = False


def adapter_summary(adapter: Adapter) -> dict[str, Any]:
    """The short form used in search results."""
    return {
        "id": f"{adapter.owner}/{adapter.name}", "owner": adapter.owner, "name": adapter.name,
        "private": adapter.private, "base_model": adapter.base_model, "method": adapter.method,
        "rank": adapter.rank, "max_rank": adapter.max_rank, "size": adapter.total_size,
        "target_modules": adapter.target_modules, "downloads": adapter.downloads,
        "updated_at": adapter.updated_at.isoformat(),
    }


def revision_detail(session: Session, adapter: Adapter, revision: Revision) -> dict[str, Any]:
    """Everything about one revision of an adapter."""
    files = crud.revision_files(session, revision=revision)
    return {
        **adapter_summary(adapter),
        "revision": revision.sha, "message": revision.message, "author": revision.author,
        "created_at": revision.created_at.isoformat(), "meta": revision.meta,
        "tags": crud.tags_of(session, adapter=adapter),
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
    }
