"""Request bodies of the native API (its answers: :mod:`peft_hub.contract`).

Every field is bounded: strict types (no ``true`` for an integer, no
``"5"``), ranges that fit the database columns, finite numbers, and strings
without NUL, control characters or unpaired surrogates, so a bad body is a
422 here and never an overflow or an encoding error in the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictInt, StringConstraints

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILENAME_BYTES, WEIGHTS_MAX_BYTES
from peft_hub.model_files import MAX_MODEL_FILES
from peft_hub.safeparse import check_strings, json_depth, name_problem, text_problem


def _name(value: str) -> str:
    problem = name_problem(value, len(value))
    if problem:
        raise ValueError(problem)
    return value


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


@dataclass(frozen=True)
class OneLine(GroupedMetadata):
    """``Annotated[str, OneLine(64)]``: a short single-line string, strict, of
    ``min_length`` to ``max_length`` characters, without control characters,
    NUL or surrogates.

    Metadata rather than a function returning a type, so type checkers read
    the field as ``str``; the lengths are checked before the characters.
    """

    max_length: int
    min_length: int = 0

    def __iter__(self) -> Iterator[Any]:
        yield from StringConstraints(strict=True, min_length=self.min_length, max_length=self.max_length)
        yield AfterValidator(_name)


@dataclass(frozen=True)
class FreeText(GroupedMetadata):
    """``Annotated[str, FreeText(4000)]``: free text (newlines allowed), strict,
    at most ``max_length`` characters, without NUL or unpaired surrogates."""

    max_length: int

    def __iter__(self) -> Iterator[Any]:
        yield from StringConstraints(strict=True, max_length=self.max_length)
        yield AfterValidator(_text)


#: A finite float: NaN and infinities do not fit a JSON column on PostgreSQL.
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
TEN_YEARS = 10 * 366 * 86400
EXTRA_MAX_BYTES = 16 * 1024


def _extra(value: dict[str, Any]) -> dict[str, Any]:
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        raise ValueError("must be plain JSON with finite numbers") from None
    if len(encoded) > EXTRA_MAX_BYTES:
        raise ValueError(f"must be at most {EXTRA_MAX_BYTES} bytes of JSON")
    if json_depth(encoded.encode()) > 8:
        raise ValueError("must be nested at most 8 levels deep")
    check_strings(value, what="extra")
    return value


class FileSpec(BaseModel):
    path: Annotated[str, OneLine(MAX_FILENAME_BYTES, min_length=1)]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", strict=True)
    size: StrictInt = Field(ge=0, le=WEIGHTS_MAX_BYTES)

    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.sha256)


class PreuploadRequest(BaseModel):
    files: list[FileSpec] = Field(max_length=MAX_MODEL_FILES)


class CommitRequest(BaseModel):
    files: list[FileSpec] = Field(max_length=MAX_MODEL_FILES)
    tags: list[Annotated[str, OneLine(64, min_length=1)]] = Field(default_factory=list, max_length=16)
    private: StrictBool | None = None
    message: Annotated[str, FreeText(4000)] = ""


class TagRequest(BaseModel):
    #: A tag or a 40-hex revision id.
    revision: Annotated[str, OneLine(64, min_length=1)]


class EvalIn(BaseModel):
    metric: Annotated[str, OneLine(128, min_length=1)]
    value: Finite
    dataset: Annotated[str, OneLine(256, min_length=1)]
    dataset_version: Annotated[str, OneLine(128)] | None = None
    split: Annotated[str, OneLine(64)] | None = None
    extra: Annotated[dict[Annotated[str, OneLine(128)], Any], Field(max_length=64), AfterValidator(_extra)] = Field(
        default_factory=dict
    )


class EvalsRequest(BaseModel):
    revision: Annotated[str, OneLine(64, min_length=1)] = "main"
    evals: list[EvalIn] = Field(min_length=1, max_length=1000)


class TokenRequest(BaseModel):
    scope: Literal["read", "write", "admin"] = "read"
    #: The user the token acts as (created if new, admins only); default: the caller.
    namespace: str | None = None
    #: Restrict the token to these namespaces (default: all the user may use,
    #: or the calling token's own limits when it has some).
    limit: list[str] | None = Field(default=None, max_length=32)
    #: A label shown by ``token ls`` (printable text: it reaches terminals).
    name: str = Field(default="", max_length=64, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
    #: When the token stops working (naive times are UTC); default: never, or
    #: the calling token's own expiry when it has one.
    expires_at: datetime | None = None


class GcRequest(BaseModel):
    grace_seconds: StrictInt | None = Field(default=None, ge=0, le=TEN_YEARS)
    dry_run: StrictBool = False
    #: Resume a bounded run: list the store from the first sha256 after this one.
    start_after: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", strict=True)
    #: List at most this many objects in this run (then resume at its ``cursor``).
    max_objects: StrictInt | None = Field(default=None, ge=1, le=10**9)
