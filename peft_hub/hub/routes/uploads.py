"""Blobs uploaded in parts: the multipart plan a preupload answers with, and
its completion (``POST /api/adapters/{owner}/{name}/uploads/complete``).

A plan names its S3 upload id and a *ticket*: an HMAC over the blob, its
size, the part layout (with the parts' sha256s, when the client sent them),
the upload id and the user it was issued to. Only that user can re-plan
(resume) or complete the upload, and a wrong ticket, another user's, or an
upload that does not exist (any more) all get the same 404. The hub keeps no
row per upload: the store's sweeper aborts what is never completed.

The ticket's key is the session secret, else one per hub process: a hub run
as several processes must set ``PEFT_HUB_SESSION_SECRET``, and a resume after
a restart without one starts the upload again (the old one is swept).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

from pydantic import BaseModel, Field, StrictInt
from sqlalchemy import exists
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import WEIGHTS_MAX_BYTES
from peft_hub.errors import ChecksumMismatchError, InvalidInputError, NotFoundError
from peft_hub.hub import keys, ledger, possession
from peft_hub.hub.config import Settings
from peft_hub.hub.models import Blob, RevisionFile
from peft_hub.hub.schemas import FileSpec, PreuploadRequest
from peft_hub.hub.storage import BlobStore, MultipartStore
from peft_hub.model_files import MAX_MODEL_FILES

MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000
SHA256 = r"^[0-9a-f]{64}$"



class MultipartSpec(BaseModel):
    """What the client proposes for one blob: a part size and each part's
    sha256 (so every part URL is signed with its checksum), and, to resume,
    the upload id and ticket of an earlier plan."""

    part_size: StrictInt = Field(ge=MIN_PART, le=MAX_PART)
    parts: list[str] | None = Field(None, max_length=MAX_PARTS)
    upload_id: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")
    ticket: str | None = Field(None, pattern=SHA256)

    def digests(self) -> list[str] | None:
        if self.parts is not None and not all(len(p) == 64 and set(p) <= set("0123456789abcdef") for p in self.parts):
            raise InvalidInputError("multipart.parts must be 64-hex sha256 digests")
        return self.parts


class UploadFileSpec(FileSpec):
    multipart: MultipartSpec | None = None


class UploadPreuploadRequest(PreuploadRequest):
    files: list[UploadFileSpec] = Field(max_length=MAX_MODEL_FILES)  # type: ignore[assignment]  # a FileSpec with more


class CompleteRequest(BaseModel):
    sha256: str = Field(pattern=SHA256, strict=True)
    size: StrictInt = Field(ge=0, le=WEIGHTS_MAX_BYTES)
    multipart: MultipartSpec


def signing_key(app_state: Any, settings: Settings) -> bytes:
    """The tickets' HMAC key (see :mod:`peft_hub.hub.keys`)."""
    return keys.signing_key(app_state, settings, "multipart ticket")


def _ticket(key: bytes, entry: FileEntry, user: str, part_size: int, digests: list[str] | None, upload_id: str) -> str:
    layout = hashlib.sha256(",".join(digests).encode()).hexdigest() if digests is not None else "-"
    text = f"{entry.sha256}:{entry.size}:{user}:{part_size}:{layout}:{upload_id}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _part_size(number: int, count: int, part_size: int, size: int) -> int:
    return part_size if number < count else size - part_size * (count - 1)


def _layout(entry: FileEntry, spec: MultipartSpec | None, settings: Settings) -> tuple[int, list[str] | None]:
    """The part size and part digests: the client's when they describe this
    blob, else the hub's part size and no digests."""
    if spec is not None:
        digests = spec.digests()
        fits = math.ceil(entry.size / spec.part_size) <= MAX_PARTS
        if fits and (digests is None or len(digests) == math.ceil(entry.size / spec.part_size)):
            return spec.part_size, digests
    return max(settings.multipart_part_bytes, math.ceil(entry.size / MAX_PARTS)), None


def plan(
    store: BlobStore, settings: Settings, key: bytes, user: str, entry: FileEntry, spec: MultipartSpec | None
) -> dict[str, Any] | None:
    """A multipart plan for one blob, or None for a single upload (a small
    blob, or a store without multipart). With the ticket of the caller's own
    earlier plan it resumes that upload: URLs only for the parts S3 lacks."""
    if not isinstance(store, MultipartStore) or entry.size <= settings.multipart_threshold:
        return None
    part_size, digests = _layout(entry, spec, settings)
    count = math.ceil(entry.size / part_size)
    done: set[int] = set()
    upload_id = None
    if (
        spec is not None
        and spec.upload_id
        and spec.ticket
        and hmac.compare_digest(spec.ticket, _ticket(key, entry, user, part_size, digests, spec.upload_id))
    ):
        listed = store.multipart_parts(entry.sha256, spec.upload_id)
        if listed is not None:
            upload_id = spec.upload_id
            done = {
                p.number
                for p in listed
                if p.number <= count and p.size == _part_size(p.number, count, part_size, entry.size)
            }
    if upload_id is None:
        upload_id = store.multipart_create(entry.sha256, user, checksums=digests is not None)
    parts = []
    for number in range(1, count + 1):
        if number in done:
            continue
        target = store.multipart_part_url(
            entry.sha256,
            upload_id,
            number,
            _part_size(number, count, part_size, entry.size),
            digests[number - 1] if digests else None,
            settings.presign_expiry,
        )
        parts.append({"number": number, "url": target.url, "headers": target.headers or {}})
    return {
        "upload_id": upload_id,
        "ticket": _ticket(key, entry, user, part_size, digests, upload_id),
        "part_size": part_size,
        "checksums": digests is not None,
        "parts": parts,
    }


def clear_unverified(engine: Engine, store: BlobStore, sha256: str, size: int) -> bool:
    """Delete an object stored under ``sha256`` whose bytes do not hash to it
    (someone completed an upload of other bytes under that name), so that a
    completion of the real bytes can take its place. The object is hashed
    streaming, outside any transaction, unless the ledger or the store already
    vouches for it; it is deleted under the blob's ledger lock, and kept if a
    revision references it or it changed meanwhile. True when it was deleted."""
    stat = store.stat(sha256)
    if stat is None:
        return False
    with Session(engine) as session:
        row = session.get(Blob, sha256)
        if ledger.trusted(row, stat):
            return False
    if stat.size == size and ledger.hash_stored(store, sha256) == sha256:
        with Session(engine) as session:
            ledger.note_verified(session, store, sha256, size)
            session.commit()
        return False
    with Session(engine) as session:
        ledger.lock(session, {sha256: size})
        referenced = session.exec(select(exists().where(col(RevisionFile.sha256) == sha256))).one()
        now = store.stat(sha256)
        if referenced or now is None or (now.size, now.modified) != (stat.size, stat.modified):
            session.rollback()
            return False
        store.delete(sha256)
        possession.forget(session, sha256=sha256)
        session.commit()
    return True


def complete(
    store: BlobStore, key: bytes, user: str, body: CompleteRequest, *, engine: Engine
) -> dict[str, Any]:
    """Join the caller's uploaded parts into the blob, refusing unless every
    part is there with the planned size. An object already under the blob's
    name that the hub has not verified is hashed first, and dropped when its
    bytes are not the blob's (see :func:`clear_unverified`).
    The blob is then unverified (only S3's composite checksum): publish hashes
    it once before any revision holds it."""
    entry, spec = FileEntry("", body.size, body.sha256), body.multipart
    digests = spec.digests()
    missing = NotFoundError(f"no upload {(spec.upload_id or '')[:80]!r} of blob {body.sha256} of yours is in progress")
    if (
        not isinstance(store, MultipartStore)
        or not spec.upload_id
        or not spec.ticket
        or not hmac.compare_digest(spec.ticket, _ticket(key, entry, user, spec.part_size, digests, spec.upload_id))
    ):
        raise missing
    listed = store.multipart_parts(body.sha256, spec.upload_id)
    if listed is None:
        raise missing
    count = math.ceil(body.size / spec.part_size)
    sizes = {p.number: p.size for p in listed}
    absent = [n for n in range(1, count + 1) if n not in sizes]
    if absent:
        raise InvalidInputError(f"blob {body.sha256}: parts {absent[:10]} are not uploaded yet; push again to resume")
    wrong = [
        p.number for p in listed if p.number > count or p.size != _part_size(p.number, count, spec.part_size, body.size)
    ]
    if wrong:
        store.multipart_abort(body.sha256, spec.upload_id)
        raise ChecksumMismatchError(
            f"blob {body.sha256}: parts {wrong[:10]} do not have the planned sizes "
            f"for {body.size} bytes; the upload was dropped, push again"
        )
    clear_unverified(engine, store, body.sha256, body.size)
    stored = store.multipart_complete(body.sha256, spec.upload_id, listed, digests)
    return {"sha256": body.sha256, "size": body.size, "stored": stored}
