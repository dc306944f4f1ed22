"""The native API's response shapes: what the hub returns and the client parses.

Pydantic models only, importing neither FastAPI nor SQLModel, so the client
can use them without the server's dependencies. The hub builds its answers
with these (``model_dump()`` gives exactly the JSON it sends); times are ISO
8601 strings, as on the wire. The Hugging Face–compatible shapes live in
``peft_hub.hub.hf.shapes``: they follow huggingface.co, not this contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class FileInfo(BaseModel):
    """One file of a revision."""

    path: str
    sha256: str
    size: int


class AdapterSummary(BaseModel):
    """An adapter as search results list it."""

    id: str
    owner: str
    name: str
    private: bool
    base_model: str | None
    method: str | None
    rank: int | None
    max_rank: int | None
    size: int
    target_modules: list[str]
    downloads: int
    updated_at: str
    #: ``adapter`` or ``model`` (a base model); absent from older hubs' answers.
    kind: str = "adapter"


class RevisionDetail(AdapterSummary):
    """One revision of an adapter: its metadata, tags and files."""

    revision: str
    message: str
    author: str
    created_at: str
    meta: dict[str, Any]
    tags: dict[str, str]
    files: list[FileInfo]
    #: Set by ``fsck --repair``: which files' blobs are missing or corrupt.
    broken: dict[str, Any] | None


class CommitResult(RevisionDetail):
    """The answer to a commit: the revision, and whether it is new."""

    created: bool


class SearchPage(BaseModel):
    items: list[AdapterSummary]
    total: int
    #: False: at least ``total`` match (a text query's count stops past a bound: crud.search.COUNT_BOUND).
    total_exact: bool = True
    page: int
    per_page: int


class RevisionItem(BaseModel):
    revision: str
    message: str
    author: str
    created_at: str


class Upload(BaseModel):
    """Where to send one blob's bytes (``auth``: with the hub token)."""

    path: str
    sha256: str
    url: str
    method: str
    headers: dict[str, str]
    auth: bool


class PreuploadPlan(BaseModel):
    uploads: list[Upload]
    #: Whether the repo is private now; None when there is no such repo (or from a hub before 2026-12-03).
    private: bool | None = None


class TagMoved(BaseModel):
    tag: str
    revision: str


class EvalsAdded(BaseModel):
    revision: str
    added: int


class GcReport(BaseModel):
    """What one gc run did (see ``peft_hub.hub.gc``); resume at ``cursor`` unless ``complete``."""

    deleted: list[str]
    bytes_freed: int
    kept_in_grace: int
    dry_run: bool
    grace_seconds: int
    stale_uploads_removed: int
    objects_listed: int
    start_after: str | None
    complete: bool
    cursor: str | None
